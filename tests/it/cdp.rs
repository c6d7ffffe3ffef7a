//! A small Chrome DevTools Protocol client for the report's browser tests:
//! starts headless Chromium on a free local port, opens one page, and
//! evaluates JavaScript in it over a WebSocket (tungstenite). Every wait is
//! bounded; the browser is killed when the driver is dropped.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

/// Longest wait for any one answer from the browser.
const TIMEOUT: Duration = Duration::from_secs(60);

pub struct Browser {
    child: Child,
    ws: WebSocket<MaybeTlsStream<TcpStream>>,
    session: String,
    next: u64,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.ws.close(None);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Chromium binary on PATH, if any.
pub fn chromium() -> Option<&'static str> {
    ["chromium", "chromium-headless-shell", "chromium-browser"]
        .into_iter()
        .find(|b| {
            Command::new(b)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
}

impl Browser {
    /// Headless Chromium with a `width` × `height` viewport; `None` (with a
    /// notice) when Chromium is missing, which `CI=true` does not accept.
    pub fn launch(width: u32, height: u32) -> Option<Self> {
        let Some(bin) = chromium() else {
            assert!(
                std::env::var("CI").map_or(true, |v| v != "true"),
                "CI=true but no chromium on PATH"
            );
            eprintln!("notice: chromium not found; skipping the browser test");
            return None;
        };
        let profile = tempfile::tempdir().expect("profile dir");
        let mut child = Command::new(bin)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "--hide-scrollbars",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start chromium");
        // Chromium prints `DevTools listening on ws://127.0.0.1:PORT/...`.
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(i) = line.find("ws://") {
                    let _ = tx.send(line[i..].trim().to_string());
                }
            }
        });
        let url = match rx.recv_timeout(TIMEOUT) {
            Ok(u) => u,
            Err(_) => {
                let _ = child.kill();
                panic!("chromium did not print its DevTools address within {TIMEOUT:?}");
            }
        };
        let (ws, _) = tungstenite::connect(url.as_str()).expect("connect to DevTools");
        if let MaybeTlsStream::Plain(s) = ws.get_ref() {
            s.set_read_timeout(Some(TIMEOUT)).expect("read timeout");
        }
        let mut b = Browser {
            child,
            ws,
            session: String::new(),
            next: 0,
            _profile: profile,
        };
        let target = b.call("Target.createTarget", json!({"url": "about:blank"}));
        let id = target["targetId"].as_str().expect("targetId").to_string();
        let attached = b.call(
            "Target.attachToTarget",
            json!({"targetId": id, "flatten": true}),
        );
        b.session = attached["sessionId"].as_str().expect("sessionId").into();
        b.call("Page.enable", json!({}));
        b.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": false}),
        );
        Some(b)
    }

    /// Sends one command (to the page once attached) and returns its result.
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if !self.session.is_empty() {
            msg["sessionId"] = json!(self.session);
        }
        self.ws
            .send(Message::text(msg.to_string()))
            .expect("send to DevTools");
        let start = Instant::now();
        loop {
            assert!(start.elapsed() < TIMEOUT, "{method}: no answer");
            let reply = self.ws.read().expect("read from DevTools");
            let Message::Text(text) = reply else { continue };
            let v: Value = serde_json::from_str(text.as_str()).expect("DevTools JSON");
            if v["id"].as_u64() == Some(id) {
                assert!(v.get("error").is_none(), "{method}: {}", v["error"]);
                return v["result"].clone();
            }
        }
    }

    /// Evaluates `expr` in the page (promises awaited) and returns its value;
    /// a JavaScript exception fails the test.
    pub fn eval(&mut self, expr: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
        );
        assert!(
            r.get("exceptionDetails").is_none(),
            "{expr}: {}",
            r["exceptionDetails"]
        );
        r["result"]["value"].clone()
    }

    /// Opens `page` from `file://` and waits until its script has run
    /// (`data-ready`); returns how long that took.
    pub fn open(&mut self, page: &Path) -> Duration {
        let start = Instant::now();
        self.call(
            "Page.navigate",
            json!({"url": format!("file://{}", page.display())}),
        );
        loop {
            let ready = self.eval(
                "document.readyState === 'complete' && document.documentElement.getAttribute('data-ready') === '1'",
            );
            if ready == json!(true) {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < TIMEOUT,
                "{} did not finish rendering",
                page.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A PNG of the viewport (or of the whole page with `full`).
    pub fn screenshot(&mut self, path: &Path, full: bool) {
        let params = if full {
            let m = self.call("Page.getLayoutMetrics", json!({}));
            let size = &m["cssContentSize"];
            json!({"format": "png", "captureBeyondViewport": true, "clip": {
                "x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}})
        } else {
            json!({"format": "png"})
        };
        let r = self.call("Page.captureScreenshot", params);
        let png = data_encoding::BASE64
            .decode(r["data"].as_str().expect("data").as_bytes())
            .expect("base64");
        std::fs::write(path, png).expect("write screenshot");
    }
}
