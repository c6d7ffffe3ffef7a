//! JSON over HTTP with the retry policy of a served model: connection
//! errors, timeouts, 429 (honouring `Retry-After`) and 5xx are retried with
//! bounded exponential backoff and jitter; any other status fails at once
//! with the server's message. The API key is sent as a bearer token and
//! never appears in an error.

use std::time::{Duration, Instant};

use serde_json::Value;

/// The longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(8);
/// The first wait; it doubles per attempt.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// The longest `Retry-After` honoured.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("{url}: HTTP {status}: {message}")]
    Status {
        url: String,
        status: u16,
        message: String,
    },
    #[error("{url}: {message} (gave up after {attempts} attempts)")]
    Exhausted {
        url: String,
        message: String,
        attempts: u32,
    },
    #[error("{url}: the response is not the JSON expected: {message}")]
    Body { url: String, message: String },
}

/// One answered request.
pub struct Reply {
    pub json: Value,
    /// From sending the request to the end of the body.
    pub ms: f64,
    /// From sending the request to the response's headers.
    pub ttfb_ms: f64,
}

pub struct Client {
    agent: ureq::Agent,
    base: String,
    key: Option<String>,
    timeout: Duration,
    retries: u32,
}

enum Attempt {
    Done(Reply),
    Retry {
        message: String,
        wait: Option<Duration>,
    },
    Fail(HttpError),
}

impl Client {
    pub fn new(base_url: &str, key: Option<String>, timeout_s: f64, retries: u32) -> Self {
        Self {
            agent: ureq::AgentBuilder::new().build(),
            base: base_url.trim_end_matches('/').to_string(),
            key,
            timeout: Duration::from_secs_f64(timeout_s),
            retries,
        }
    }

    pub fn post(&self, path: &str, body: &Value) -> Result<Reply, HttpError> {
        self.send(path, Some(body))
    }

    pub fn get(&self, path: &str) -> Result<Reply, HttpError> {
        self.send(path, None)
    }

    fn send(&self, path: &str, body: Option<&Value>) -> Result<Reply, HttpError> {
        let url = format!("{}{path}", self.base);
        let mut last = String::new();
        for attempt in 0..=self.retries {
            match self.attempt(&url, body) {
                Attempt::Done(r) => return Ok(r),
                Attempt::Fail(e) => return Err(e),
                Attempt::Retry { message, wait } => {
                    last = message;
                    if attempt < self.retries {
                        std::thread::sleep(wait.unwrap_or_else(|| backoff(attempt)));
                    }
                }
            }
        }
        Err(HttpError::Exhausted {
            url,
            message: last,
            attempts: self.retries + 1,
        })
    }

    fn attempt(&self, url: &str, body: Option<&Value>) -> Attempt {
        let mut req = match body {
            Some(_) => self.agent.post(url),
            None => self.agent.get(url),
        }
        .timeout(self.timeout)
        .set("Accept", "application/json");
        if let Some(k) = &self.key {
            req = req.set("Authorization", &format!("Bearer {k}"));
        }
        let t0 = Instant::now();
        let sent = match body {
            Some(b) => req
                .set("Content-Type", "application/json")
                .send_string(&b.to_string()),
            None => req.call(),
        };
        let ttfb_ms = t0.elapsed().as_secs_f64() * 1e3;
        match sent {
            Ok(resp) => {
                let text = match resp.into_string() {
                    Ok(t) => t,
                    Err(e) => {
                        return Attempt::Retry {
                            message: self.redact(&format!("reading the response: {e}")),
                            wait: None,
                        }
                    }
                };
                match serde_json::from_str(&text) {
                    Ok(json) => Attempt::Done(Reply {
                        json,
                        ms: t0.elapsed().as_secs_f64() * 1e3,
                        ttfb_ms,
                    }),
                    Err(e) => Attempt::Fail(HttpError::Body {
                        url: url.to_string(),
                        message: e.to_string(),
                    }),
                }
            }
            Err(ureq::Error::Status(status, resp)) => {
                let retry_after = resp
                    .header("Retry-After")
                    .and_then(|v| v.trim().parse::<f64>().ok())
                    .filter(|s| s.is_finite() && *s >= 0.0)
                    .map(|s| Duration::from_secs_f64(s).min(MAX_RETRY_AFTER));
                let message = self.redact(&server_message(resp.into_string().unwrap_or_default()));
                if status == 429 || status >= 500 {
                    Attempt::Retry {
                        message: format!("HTTP {status}: {message}"),
                        wait: retry_after,
                    }
                } else {
                    Attempt::Fail(HttpError::Status {
                        url: url.to_string(),
                        status,
                        message,
                    })
                }
            }
            Err(ureq::Error::Transport(t)) => Attempt::Retry {
                message: self.redact(&t.to_string()),
                wait: None,
            },
        }
    }

    /// `s` with the API key, should a server echo it, blanked.
    fn redact(&self, s: &str) -> String {
        match &self.key {
            Some(k) if !k.is_empty() => s.replace(k.as_str(), "<redacted>"),
            _ => s.to_string(),
        }
    }
}

/// The error message of a JSON error body (`{"error": {"message": …}}`,
/// `{"error": "…"}`, `{"detail": …}`), else the body's first line.
fn server_message(body: String) -> String {
    let from_json = serde_json::from_str::<Value>(&body).ok().and_then(|v| {
        let e = v.get("error").or_else(|| v.get("detail"))?;
        Some(match e.get("message").and_then(Value::as_str) {
            Some(m) => m.to_string(),
            None => e.as_str().map_or_else(|| e.to_string(), str::to_string),
        })
    });
    let msg = from_json.unwrap_or_else(|| body.lines().next().unwrap_or("").to_string());
    let msg: String = msg.chars().take(300).collect();
    if msg.is_empty() {
        "(no message)".into()
    } else {
        msg
    }
}

/// `FIRST_BACKOFF · 2^attempt`, capped, with ±50 % jitter.
fn backoff(attempt: u32) -> Duration {
    let base = FIRST_BACKOFF
        .saturating_mul(1u32 << attempt.min(16))
        .min(MAX_BACKOFF);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let jitter = 0.5 + f64::from(nanos % 1000) / 1000.0;
    base.mul_f64(jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        for a in 0..10 {
            let d = backoff(a);
            let base = FIRST_BACKOFF.saturating_mul(1 << a).min(MAX_BACKOFF);
            assert!(
                d >= base.mul_f64(0.5) && d <= base.mul_f64(1.5),
                "{a}: {d:?}"
            );
        }
    }

    #[test]
    fn server_messages_are_read_from_the_usual_shapes() {
        let m = |s: &str| server_message(s.to_string());
        assert_eq!(
            m(r#"{"error":{"message":"bad key","type":"auth"}}"#),
            "bad key"
        );
        assert_eq!(m(r#"{"error":"model not found"}"#), "model not found");
        assert_eq!(m(r#"{"detail":"nope"}"#), "nope");
        assert_eq!(m("plain text\nmore"), "plain text");
        assert_eq!(m(""), "(no message)");
    }
}
