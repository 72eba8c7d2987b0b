// Drive the MLflow UI in headless Debian chromium (playwright-core) and report what it shows.
//
//   NODE_PATH=.cache/ui-test-node/node_modules node tests/ui/mlflow_ui.js spec.json
//
// spec.json: {"base": "http://127.0.0.1:PORT", "experimentId": "1", "runNames": [...],
//             "artifactRun": {"id": "...", "path": "visuals/.../video_reconstruction.png"},
//             "evalRun": {"id": "...", "name": "...", "parentId": "...", "metric": "..."},
//             "out": "<directory for screenshots and report.json>"}
// Every wait is for page content (run names, plotted traces), never for a fixed time; the
// Python test asserts on report.json and keeps the screenshots.
const fs = require('fs');
const path = require('path');
const { chromium } = require('playwright-core');

const TIMEOUT = 120000;

// Poll an async condition (page content) until it holds.
async function until(condition, what) {
  for (const deadline = Date.now() + TIMEOUT; Date.now() < deadline; ) {
    if (await condition()) return;
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
  throw new Error(`timed out waiting for ${what}`);
}

async function closeAssistant(page) {
  // The MLflow Assistant side panel covers a third of the page: close it when it is open.
  const close = page.getByRole('button', { name: 'Close', exact: true });
  if (await close.count()) await close.first().click();
}

// Load ``url`` and wait until ``ready`` (a locator of the content that matters) is visible.
async function open(page, url, ready) {
  await page.goto(url, { waitUntil: 'load' });
  await ready.first().waitFor({ timeout: TIMEOUT });
  await closeAssistant(page);
}

// Title and plotted traces of every chart card on the page (plotly keeps them on the element).
function chartCards() {
  return [...document.querySelectorAll('[data-testid="experiment-view-compare-runs-card"]')].map((card) => {
    const plot = card.querySelector('.js-plotly-plot');
    return {
      title: card.innerText.split('\n')[0].trim(),
      text: card.innerText,
      traces: ((plot && plot.data) || []).map((t) => ({ name: t.name, x: [...(t.x || [])], y: [...(t.y || [])] })),
    };
  });
}

(async () => {
  const spec = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
  const shot = (name) => path.join(spec.out, name);
  const report = {};
  const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', args: ['--no-sandbox'] });
  try {
    const page = await browser.newPage({ viewport: { width: 1600, height: 1000 } });
    // UI preferences a user would pick: the "Model training" sidebar, no assistant panel.
    await page.addInitScript(() => {
      localStorage.setItem('mlflow.workflowType_v1', '"machine_learning"');
      localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');
      localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');
    });
    const experiment = `${spec.base}/#/experiments/${spec.experimentId}`;

    // 1. The experiment's runs table lists every run; the evaluation is nested under its parent.
    await open(page, `${experiment}/runs`, page.getByText(spec.runNames[0]));
    for (const name of spec.runNames) await page.getByText(name).first().waitFor({ timeout: TIMEOUT });
    if (spec.evalRun) {
      await page.locator(`[row-id="${spec.evalRun.parentId}"] [col-id="attributes.\`Run Name\`"] button`).first().click();
      await page.getByText(spec.evalRun.name).first().waitFor({ timeout: TIMEOUT });
    }
    await page.screenshot({ path: shot('experiment_runs.png') });
    report.runs = { text: await page.innerText('body') };

    // 2. The compare (chart) view, filtered to the loss charts, with one curve per run.
    const search = page.getByPlaceholder('Search metric charts');
    await open(page, `${experiment}/runs?compareRunsMode=CHART`, search);
    await search.fill('loss');
    await until(async () => {
      const loss = (await page.evaluate(chartCards)).find((c) => c.title === 'loss');
      return loss && spec.runNames.every((n) => loss.traces.some((t) => t.name === n && t.x.length > 1));
    }, 'a loss chart with a curve per run');
    await page.screenshot({ path: shot('compare_loss_charts.png') });
    report.compare = { cards: await page.evaluate(chartCards) };

    // 2b. The periodic probe's curves (probe/<set>/<modality>/<encoder>/knn_top1) beside the losses.
    if (spec.probe) {
      await search.fill(spec.probe.filter);
      await until(async () => {
        const card = (await page.evaluate(chartCards)).find((c) => c.title === spec.probe.metric);
        return card && card.traces.some((t) => t.name === spec.probe.runName && t.x.length > 1);
      }, 'a probe chart with the run\'s curve');
      await page.screenshot({ path: shot('compare_probe_charts.png') });
      report.probe = { cards: await page.evaluate(chartCards) };
    }

    // 3. A reconstruction grid among the run's artifacts, rendered as an image.
    const artifact = spec.artifactRun;
    await open(page, `${experiment}/runs/${artifact.id}/artifacts/${artifact.path}`,
      page.getByText(path.basename(artifact.path)));
    const image = page.locator(`img[src*="${path.basename(artifact.path)}"], img[src^="blob:"]`).first();
    await image.waitFor({ timeout: TIMEOUT });
    await page.waitForFunction((el) => el.complete && el.naturalWidth > 0, await image.elementHandle(),
      { timeout: TIMEOUT });
    await page.screenshot({ path: shot('run_artifact_reconstruction.png') });
    report.artifact = {
      text: await page.innerText('body'),
      image: await image.evaluate((el) => ({ width: el.naturalWidth, height: el.naturalHeight })),
    };

    // 4. The evaluation child run: its scores and its parent.
    if (spec.evalRun) {
      await open(page, `${experiment}/runs/${spec.evalRun.id}`, page.getByText(spec.evalRun.metric));
      await page.screenshot({ path: shot('eval_child_run.png') });
      report.eval = { text: await page.innerText('body') };
    }
  } finally {
    fs.writeFileSync(path.join(spec.out, 'report.json'), JSON.stringify(report, null, 1));
    await browser.close();
  }
})().catch((error) => {
  console.error(error);
  process.exit(1);
});
