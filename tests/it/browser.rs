//! The HTML report driven in headless Chromium over the DevTools protocol:
//! the leaderboard sorts, the explorer's "flipped" filter agrees with
//! `compare`'s flip counts, a document opens, hostile text stays inert.
//! Without Chromium the tests are skipped, unless `CI=true`.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::cdp::Browser;
use crate::report::{compare_cmd, good_cells, report_cmd, write_run, CellSpec};

fn rendered(runs: &[&Path], out: &Path) -> PathBuf {
    let o = report_cmd(runs, out);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    out.join("report.html")
}

/// Picks `value` in the select `id` and fires its change event.
fn choose(b: &mut Browser, id: &str, value: &str) {
    b.eval(&format!(
        "(() => {{ const s = document.getElementById({id:?}); s.value = {value:?}; s.dispatchEvent(new Event('change')); }})()"
    ));
}

fn leaderboard_models(b: &mut Browser) -> Vec<String> {
    let v = b.eval("Array.from(document.querySelectorAll('#leaderboard tbody tr')).map(r => r.cells[0].textContent)");
    serde_json::from_value(v).expect("names")
}

/// The model-index of `name` in the page's data.
fn model_index(b: &mut Browser, name: &str) -> String {
    b.eval(&format!(
        "String(JSON.parse(document.getElementById('slm-data').textContent).models.indexOf({name:?}))"
    ))
    .as_str()
    .expect("index")
    .to_string()
}

/// The `flips −/+` cell of `compare`'s Markdown row for `task`.
fn compare_flips(md: &str, task: &str) -> u64 {
    let row = md
        .lines()
        .find(|l| l.split('|').nth(2).map(str::trim) == Some(task))
        .unwrap_or_else(|| panic!("no {task} row in\n{md}"));
    let flips = row.split('|').nth(7).expect("flips column").trim();
    let (w, r) = flips.split_once(" / ").expect("w / r");
    w.parse::<u64>().expect("w") + r.parse::<u64>().expect("r")
}

#[test]
fn report_sorts_filters_flips_and_opens_a_document() {
    let tmp = tempfile::tempdir().expect("tmp");
    let run = write_run(tmp.path(), "run-a", &good_cells());
    let page = rendered(&[&run], &tmp.path().join("out"));
    let Some(mut b) = Browser::launch(1280, 900) else {
        return;
    };
    b.open(&page);
    // Chromium logged no script error and the six charts are inline.
    assert_eq!(
        b.eval("document.documentElement.getAttribute('data-rendered')"),
        json!("6")
    );
    // Sorting: copa is alpha 0.75, beta 0.5. The first click sorts up.
    let col = b.eval("Array.from(document.querySelectorAll('#leaderboard thead th')).findIndex(th => th.textContent.startsWith('copa'))");
    let click = format!("document.querySelectorAll('#leaderboard thead th')[{col}].click()");
    b.eval(&click);
    assert_eq!(leaderboard_models(&mut b), ["beta", "alpha"]);
    b.eval(&click);
    assert_eq!(leaderboard_models(&mut b), ["alpha", "beta"]);
    assert_eq!(
        b.eval(&format!(
            "document.querySelectorAll('#leaderboard thead th')[{col}].getAttribute('aria-sort')"
        )),
        json!("descending")
    );
    // The explorer's flipped rows for alpha vs beta on copa equal the
    // flips `compare --pair alpha=beta` counts on the same run.
    let out = compare_cmd(&run, &run, &[Path::new("--pair"), Path::new("alpha=beta")]);
    let md = String::from_utf8_lossy(&out.stdout).into_owned();
    let want = compare_flips(&md, "copa");
    assert!(want > 0, "{md}");
    let (a, bi) = (model_index(&mut b, "alpha"), model_index(&mut b, "beta"));
    let copa = b.eval("String(JSON.parse(document.getElementById('slm-data').textContent).tasks.findIndex(t => t.name === 'copa'))");
    choose(&mut b, "ex-task", copa.as_str().expect("copa"));
    choose(&mut b, "ex-outcome", "flipped");
    choose(&mut b, "ex-a", &a);
    choose(&mut b, "ex-b", &bi);
    let count = b.eval("document.getElementById('ex-count').textContent");
    assert_eq!(count, json!(want.to_string()), "{md}");
    let rows = b.eval("document.querySelectorAll('#ex-rows tr').length");
    assert_eq!(rows, json!(want));
    // The diff view says the same, split by direction.
    let diff = b.eval("Array.from(document.querySelectorAll('#diff-rows tr')).filter(r => r.cells[0].textContent === 'copa').map(r => [r.querySelector('.a-only').textContent, r.querySelector('.b-only').textContent])[0]");
    let (x, y): (String, String) =
        serde_json::from_value(json!([diff[0], diff[1]])).expect("diff counts");
    assert_eq!(
        x.parse::<u64>().expect("a") + y.parse::<u64>().expect("b"),
        want
    );
    // Opening a document shows its prompt, choices and both models.
    b.eval("document.querySelector('#ex-rows tr').click()");
    let doc: Value = b.eval("(() => { const d = document.getElementById('ex-doc'); return {hidden: d.hidden, title: d.querySelector('h3').textContent, gold: d.querySelectorAll('tr.gold').length, cols: d.querySelectorAll('table.doc th').length}; })()");
    assert_eq!(doc["hidden"], json!(false), "{doc}");
    assert!(
        doc["title"]
            .as_str()
            .is_some_and(|t| t.starts_with("copa / document ")),
        "{doc}"
    );
    assert_eq!(doc["gold"], json!(1), "{doc}");
    // choice + one log-likelihood column per model.
    assert_eq!(doc["cols"], json!(3), "{doc}");
}

#[test]
fn hostile_text_and_model_names_render_inert() {
    let tmp = tempfile::tempdir().expect("tmp");
    // Model names become folder names, so they hold no '/'; the dataset
    // text (the fixture's documents 0 and 1) carries `</script>`.
    let specs = [
        CellSpec {
            model: "<img src=x onerror=window.pwned=1>",
            task: "copa",
            correct: |i| i % 2 == 0,
            latency_ms: 10.0,
            rss_mib: 100,
        },
        CellSpec {
            model: "<b id=injected onmouseover=window.pwned=4>",
            task: "copa",
            correct: |i| i % 3 == 0,
            latency_ms: 11.0,
            rss_mib: 100,
        },
    ];
    let run = write_run(tmp.path(), "run-x", &specs);
    let page = rendered(&[&run], &tmp.path().join("out"));
    let html = std::fs::read_to_string(&page).expect("html");
    assert!(!html.contains("<img") && !html.contains("<b id=injected"));
    let Some(mut b) = Browser::launch(1280, 900) else {
        return;
    };
    b.open(&page);
    // Render every row of the explorer and open the hostile documents.
    choose(&mut b, "ex-outcome", "all");
    b.eval("while (!document.getElementById('ex-more').hidden) document.getElementById('ex-more').click()");
    b.eval(
        "Array.from(document.querySelectorAll('#ex-rows tr')).slice(0, 4).forEach(r => r.click())",
    );
    let v = b.eval("({pwned: typeof window.pwned, img: document.querySelectorAll('img').length, injected: document.querySelectorAll('#injected').length, handlers: document.querySelectorAll('[onerror],[onload],[onmouseover]').length, scripts: document.querySelectorAll('script').length, text: document.body.innerText.includes('<img src=x onerror=window.pwned=1>')})");
    assert_eq!(
        v,
        json!({"pwned": "undefined", "img": 0, "injected": 0, "handlers": 0, "scripts": 2, "text": true}),
    );
    // Document 1's prompt is `</script><script>…</script><img onerror=…>`.
    b.eval("Array.from(document.querySelectorAll('#ex-rows tr')).find(r => r.cells[1].textContent === '1').click()");
    let doc = b.eval("document.getElementById('ex-doc').innerText");
    assert!(
        doc.as_str().is_some_and(|d| d.contains(
            "</script><script>window.pwned=2</script><img src=x onerror=\"window.pwned=3\"> ok?"
        )),
        "{doc}"
    );
    let v = b.eval("({pwned: typeof window.pwned, img: document.querySelectorAll('img').length, scripts: document.querySelectorAll('script').length})");
    assert_eq!(v, json!({"pwned": "undefined", "img": 0, "scripts": 2}));
}

/// Drives a real report (`SLMBENCH_REPORT_HTML=.../report.html`), prints
/// how long it takes to open and to filter, checks the flipped counts
/// against `compare` with `SLMBENCH_REPORT_RUN=RUN_DIR`, and with
/// `SLMBENCH_SCREENSHOTS=DIR` saves the screenshots the README shows.
/// Run by hand: `cargo test --release --test it browser::real -- --ignored --nocapture`.
#[test]
#[ignore = "needs a rendered report: SLMBENCH_REPORT_HTML"]
fn real_report_timings_and_screenshots() {
    let page = PathBuf::from(std::env::var("SLMBENCH_REPORT_HTML").expect("SLMBENCH_REPORT_HTML"));
    let shots = std::env::var("SLMBENCH_SCREENSHOTS")
        .ok()
        .map(PathBuf::from);
    let Some(mut b) = Browser::launch(1300, 900) else {
        return;
    };
    let opened = b.open(&page);
    let size = b.eval("(() => { const d = JSON.parse(document.getElementById('slm-data').textContent); return [d.models.length, d.tasks.length, d.cells.reduce((n, c) => n + c.ok.filter(x => x !== null).length, 0)]; })()");
    println!(
        "opened in {:.0} ms (models, tasks, documents × models: {size})",
        opened.as_secs_f64() * 1000.0
    );
    if let Some(d) = &shots {
        std::fs::create_dir_all(d).expect("dir");
        b.screenshot(&d.join("report-leaderboard.png"), false);
    }
    let t = b.eval("(() => { const t0 = performance.now(); const s = document.getElementById('ex-outcome'); s.value = 'flipped'; s.dispatchEvent(new Event('change')); return [performance.now() - t0, document.getElementById('ex-count').textContent]; })()");
    println!(
        "filter to flipped (models 0 vs 1, all tasks): {:.1} ms, {} documents",
        t[0].as_f64().unwrap_or(f64::NAN),
        t[1]
    );
    let t = b.eval("(() => { const t0 = performance.now(); const s = document.getElementById('ex-outcome'); s.value = 'wrong'; s.dispatchEvent(new Event('change')); return [performance.now() - t0, document.getElementById('ex-count').textContent]; })()");
    println!(
        "filter to wrong (all models, all tasks): {:.1} ms, {} rows",
        t[0].as_f64().unwrap_or(f64::NAN),
        t[1]
    );
    // With the run directory (`SLMBENCH_REPORT_RUN`): per task, the
    // explorer's flipped count for the first two models equals `compare`'s.
    if let Ok(run) = std::env::var("SLMBENCH_REPORT_RUN") {
        let models: Vec<String> = serde_json::from_value(
            b.eval("JSON.parse(document.getElementById('slm-data').textContent).models"),
        )
        .expect("models");
        let tasks: Vec<String> = serde_json::from_value(b.eval(
            "JSON.parse(document.getElementById('slm-data').textContent).tasks.map(t => t.name)",
        ))
        .expect("tasks");
        let pair = format!("{}={}", models[0], models[1]);
        let out = compare_cmd(
            Path::new(&run),
            Path::new(&run),
            &[Path::new("--pair"), Path::new(&pair)],
        );
        let md = String::from_utf8_lossy(&out.stdout).into_owned();
        let head = format!("| {} → {} |", models[0], models[1]);
        let rows: String = md
            .lines()
            .filter(|l| l.starts_with(&head))
            .map(|l| format!("{l}\n"))
            .collect();
        choose(&mut b, "ex-outcome", "flipped");
        choose(&mut b, "ex-a", "0");
        choose(&mut b, "ex-b", "1");
        for (k, t) in tasks.iter().enumerate() {
            choose(&mut b, "ex-task", &k.to_string());
            let shown = b.eval("document.getElementById('ex-count').textContent");
            let want = compare_flips(&rows, t);
            println!(
                "{t}: {} vs {}: explorer {shown}, compare {want}",
                models[0], models[1]
            );
            assert_eq!(shown, json!(want.to_string()));
        }
        choose(&mut b, "ex-task", "-1");
    }
    b.eval("(() => { const s = document.getElementById('ex-outcome'); s.value = 'flipped'; s.dispatchEvent(new Event('change')); document.querySelector('#ex-rows tr').click(); document.getElementById('s-explorer').scrollIntoView(); })()");
    if let Some(d) = &shots {
        b.screenshot(&d.join("report-explorer.png"), false);
        b.eval("document.getElementById('s-significance').scrollIntoView()");
        b.screenshot(&d.join("report-significance.png"), false);
        b.eval("document.getElementById('s-charts').scrollIntoView()");
        b.screenshot(&d.join("report-charts.png"), false);
        b.eval("document.getElementById('s-fidelity').scrollIntoView()");
        b.screenshot(&d.join("report-fidelity.png"), false);
        b.eval("document.getElementById('s-provenance').scrollIntoView()");
        b.screenshot(&d.join("report-provenance.png"), false);
    }
}

/// A synthetic report of 5 models × 2 tasks × 10,000 documents (100,000
/// explorer rows): prints how long it takes to open and to filter. Not a
/// timed assertion; run by hand with `-- --ignored --nocapture`.
#[test]
#[ignore = "prints figures; run by hand"]
fn large_report_timings() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut specs = Vec::new();
    let correct: [fn(usize) -> bool; 5] = [
        |i| i % 2 == 0,
        |i| i % 3 != 0,
        |i| i % 5 != 0,
        |i| i % 7 < 4,
        |i| i % 4 != 1,
    ];
    for (k, model) in ["m1", "m2", "m3", "m4", "m5"].into_iter().enumerate() {
        for task in ["copa", "arc_easy"] {
            specs.push(CellSpec {
                model,
                task,
                correct: correct[k],
                latency_ms: 10.0 + k as f64,
                rss_mib: 100,
            });
        }
    }
    let run = crate::report::write_run_n(tmp.path(), "big", &specs, 10_000);
    let page = rendered(&[&run], &tmp.path().join("out"));
    let bytes = std::fs::metadata(&page).map(|m| m.len()).unwrap_or(0);
    let Some(mut b) = Browser::launch(1300, 900) else {
        return;
    };
    let opened = b.open(&page);
    println!(
        "report.html {:.1} MB opened in {:.0} ms",
        bytes as f64 / 1e6,
        opened.as_secs_f64() * 1000.0
    );
    for outcome in ["flipped", "wrong", "all"] {
        let t = b.eval(&format!("(() => {{ const t0 = performance.now(); const s = document.getElementById('ex-outcome'); s.value = '{outcome}'; s.dispatchEvent(new Event('change')); return [performance.now() - t0, document.getElementById('ex-count').textContent]; }})()"));
        println!(
            "filter to {outcome}: {:.1} ms, {} rows",
            t[0].as_f64().unwrap_or(f64::NAN),
            t[1]
        );
    }
}
