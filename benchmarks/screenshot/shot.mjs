// Screenshot of the top of an HTML page with a headless Chromium, for the images under docs/.
//
//   cd benchmarks/screenshot && npm install
//   node shot.mjs ../../runs/bench/methods/comparison.html ../../docs/comparison_top.png [width] [height]
//
// @sparticuz/chromium ships a self-contained headless Chromium inside the npm package, so this
// works on a machine that can reach the npm registry but not Chromium's download servers.
import { pathToFileURL } from "node:url";
import { resolve } from "node:path";
import chromium from "@sparticuz/chromium";
import puppeteer from "puppeteer-core";

const [page_path, out, width = "1400", height = "1100"] = process.argv.slice(2);
if (!page_path || !out) {
  console.error("usage: node shot.mjs PAGE.html OUT.png [width] [height]");
  process.exit(2);
}
const browser = await puppeteer.launch({
  args: chromium.args,
  executablePath: await chromium.executablePath(),
  headless: "shell",
  defaultViewport: { width: Number(width), height: Number(height) },
});
try {
  const page = await browser.newPage();
  await page.goto(pathToFileURL(resolve(page_path)).href, { waitUntil: "load" });
  await page.screenshot({ path: out });   // the viewport: the page's top section
  console.log(`wrote ${out}`);
} finally {
  await browser.close();
}
