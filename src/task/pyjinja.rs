//! The Jinja environment lm-eval's templates expect, on minijinja: strict
//! undefined, trailing newlines kept, no auto-escaping, a `regex_replace`
//! filter (Python `re.sub`), Python methods on values (minijinja-contrib's
//! `pycompat` plus `list.index`, `str.index` and Python's whitespace for
//! `strip`), Python-style printing (`True`, `None`, `['a', 'b']`), and a
//! parser for the Python list literals templates may render.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use minijinja::value::{Value, ValueKind};
use minijinja::{AutoEscape, Environment, Error, ErrorKind, Output, State, UndefinedBehavior};

use super::error::one_line;

/// The Jinja environment lm-eval templates expect.
pub(crate) fn make_env() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_keep_trailing_newline(true);
    env.set_auto_escape_callback(|_| AutoEscape::None);
    env.set_unknown_method_callback(python_methods);
    env.set_formatter(python_formatter);
    let cache: Arc<Mutex<HashMap<String, regex::Regex>>> = Arc::default();
    env.add_filter(
        "regex_replace",
        move |value: &str,
              pattern: &str,
              repl: &str,
              count: Option<usize>|
              -> Result<String, Error> {
            let re = {
                let mut cache = cache
                    .lock()
                    .map_err(|_| Error::new(ErrorKind::InvalidOperation, "regex cache poisoned"))?;
                match cache.get(pattern) {
                    Some(re) => re.clone(),
                    None => {
                        let re = regex::Regex::new(pattern).map_err(|e| {
                            Error::new(
                                ErrorKind::InvalidOperation,
                                format!(
                                    "bad regex `{}`: {}",
                                    super::error::shown(pattern),
                                    one_line(&e.to_string())
                                ),
                            )
                        })?;
                        cache.insert(pattern.to_string(), re.clone());
                        re
                    }
                }
            };
            let repl = python_repl_to_rust(repl);
            Ok(re
                .replacen(value, count.unwrap_or(0), repl.as_str())
                .into_owned())
        },
    );
    env
}

/// Converts a Python `re.sub` replacement (`\1`, `\g<name>`) to the `regex` crate's syntax.
fn python_repl_to_rust(repl: &str) -> String {
    let mut out = String::with_capacity(repl.len());
    let mut chars = repl.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '$' => out.push_str("$$"),
            '\\' => match chars.next() {
                Some(d) if d.is_ascii_digit() => {
                    let mut num = d.to_string();
                    if let Some(&d2) = chars.peek() {
                        if d2.is_ascii_digit() {
                            num.push(d2);
                            chars.next();
                        }
                    }
                    let _ = write!(out, "${{{num}}}");
                }
                Some('g') if chars.peek() == Some(&'<') => {
                    chars.next();
                    let name: String = chars.by_ref().take_while(|&c| c != '>').collect();
                    let _ = write!(out, "${{{name}}}");
                }
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some('r') => out.push('\r'),
                Some('\\') => out.push('\\'),
                Some(other) => {
                    out.push('\\');
                    out.push(other);
                }
                None => out.push('\\'),
            },
            other => out.push(other),
        }
    }
    out
}

/// Python's whitespace (`str.isspace`).
pub(crate) fn py_space(c: char) -> bool {
    c.is_whitespace() || ('\x1c'..='\x1f').contains(&c)
}

/// Python methods on template values: `list.index` and `str.index` here, the
/// argument-less `strip` family with Python's whitespace, and everything else
/// from minijinja-contrib's `pycompat`.
fn python_methods(
    state: &State,
    value: &Value,
    method: &str,
    args: &[Value],
) -> Result<Value, Error> {
    match (value.kind(), method) {
        (ValueKind::Seq, "index") => {
            let (what, start, end): (&Value, Option<i64>, Option<i64>) =
                minijinja::value::from_args(args)?;
            if what.is_undefined() {
                return Err(Error::from(ErrorKind::UndefinedError));
            }
            let items: Vec<Value> = value.try_iter()?.collect();
            let len = items.len() as i64;
            let clamp = |i: i64| if i < 0 { (i + len).max(0) } else { i.min(len) } as usize;
            let (s, e) = (clamp(start.unwrap_or(0)), clamp(end.unwrap_or(len)));
            items
                .iter()
                .enumerate()
                .take(e)
                .skip(s)
                .find(|(_, v)| *v == what)
                .map(|(i, _)| Value::from(i))
                .ok_or_else(|| {
                    Error::new(
                        ErrorKind::InvalidOperation,
                        format!("list.index: {} is not in list", py_repr(what)),
                    )
                })
        }
        (ValueKind::String, "index") => {
            let (sub,): (&str,) = minijinja::value::from_args(args)?;
            let s = value.as_str().unwrap_or_default();
            s.find(sub)
                .map(|b| Value::from(s[..b].chars().count()))
                .ok_or_else(|| {
                    Error::new(
                        ErrorKind::InvalidOperation,
                        "str.index: substring not found",
                    )
                })
        }
        (ValueKind::String, "strip" | "lstrip" | "rstrip") if args.is_empty() => {
            let s = value.as_str().unwrap_or_default();
            Ok(Value::from(match method {
                "strip" => s.trim_matches(py_space),
                "lstrip" => s.trim_start_matches(py_space),
                _ => s.trim_end_matches(py_space),
            }))
        }
        _ => minijinja_contrib::pycompat::unknown_method_callback(state, value, method, args),
    }
}

/// Prints values the way Jinja2 (Python's `str`) does.
fn python_formatter(out: &mut Output, _state: &State, value: &Value) -> Result<(), Error> {
    if value.is_undefined() {
        return Err(Error::from(ErrorKind::UndefinedError));
    }
    out.write_str(&py_str(value)).map_err(Error::from)
}

/// Python's `str(value)`.
pub(crate) fn py_str(value: &Value) -> String {
    match value.kind() {
        ValueKind::String => value.as_str().unwrap_or_default().to_string(),
        _ => py_repr(value),
    }
}

/// Python's `repr(value)` for JSON-like values.
pub(crate) fn py_repr(value: &Value) -> String {
    let mut out = String::new();
    write_repr(value, &mut out);
    out
}

fn write_repr(value: &Value, out: &mut String) {
    match value.kind() {
        ValueKind::None | ValueKind::Undefined => out.push_str("None"),
        ValueKind::Bool => out.push_str(if value.is_true() { "True" } else { "False" }),
        ValueKind::String => write_repr_str(value.as_str().unwrap_or_default(), out),
        ValueKind::Number if !value.is_integer() => match f64::try_from(value.clone()) {
            Ok(f) => out.push_str(&py_float(f)),
            Err(_) => {
                let _ = write!(out, "{value}");
            }
        },
        ValueKind::Seq | ValueKind::Iterable => {
            out.push('[');
            if let Ok(iter) = value.try_iter() {
                for (i, item) in iter.enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    write_repr(&item, out);
                }
            }
            out.push(']');
        }
        ValueKind::Map => {
            out.push('{');
            if let Ok(iter) = value.try_iter() {
                for (i, key) in iter.enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    write_repr(&key, out);
                    out.push_str(": ");
                    write_repr(&value.get_item(&key).unwrap_or_default(), out);
                }
            }
            out.push('}');
        }
        _ => {
            let _ = write!(out, "{value}");
        }
    }
}

fn py_float(f: f64) -> String {
    if f.is_nan() {
        return "nan".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "inf".into() } else { "-inf".into() };
    }
    if f.fract() == 0.0 && f.abs() < 1e16 {
        return format!("{f:.1}");
    }
    let s = format!("{f:?}");
    match s.split_once('e') {
        Some((m, e)) if !e.starts_with('-') => format!("{m}e+{e}"),
        _ => s,
    }
}

fn write_repr_str(s: &str, out: &mut String) {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || (0x7f..0xa1).contains(&(c as u32)) || c == '\u{ad}' => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            '\u{2028}' | '\u{2029}' | '\u{200b}'..='\u{200f}' | '\u{feff}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push(quote);
}

/// Parses a Python (or JSON) list literal of strings, as `ast.literal_eval` would.
pub(crate) fn parse_python_list(s: &str) -> Result<Vec<String>, String> {
    let bad = |what: &str| {
        format!(
            "rendered `{}` is not a list of strings: {what}",
            one_line(s)
        )
    };
    let mut chars = s.trim().chars().peekable();
    if chars.next() != Some('[') {
        return Err(bad("it does not start with `[`"));
    }
    let mut items = Vec::new();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        match chars.next() {
            Some(']') => break,
            Some(q @ ('\'' | '"')) => {
                items.push(parse_py_string(&mut chars, q).map_err(|m| bad(&m))?)
            }
            Some(c) => {
                return Err(bad(&format!(
                    "unexpected `{c}` (items must be quoted strings)"
                )))
            }
            None => return Err(bad("missing `]`")),
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        match chars.next() {
            Some(',') => {}
            Some(']') => break,
            Some(c) => return Err(bad(&format!("expected `,` or `]`, found `{c}`"))),
            None => return Err(bad("missing `]`")),
        }
    }
    if chars.any(|c| !c.is_whitespace()) {
        return Err(bad("text after `]`"));
    }
    Ok(items)
}

fn parse_py_string(
    chars: &mut std::iter::Peekable<std::str::Chars<'_>>,
    quote: char,
) -> Result<String, String> {
    let mut out = String::new();
    let hex =
        |chars: &mut std::iter::Peekable<std::str::Chars<'_>>, n: usize| -> Result<u32, String> {
            let digits: String = chars.by_ref().take(n).collect();
            u32::from_str_radix(&digits, 16).map_err(|_| format!("bad escape `{digits}`"))
        };
    loop {
        match chars.next() {
            None => return Err("unterminated string".into()),
            Some(c) if c == quote => return Ok(out),
            Some('\\') => match chars.next() {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some('r') => out.push('\r'),
                Some('0') => out.push('\0'),
                Some('a') => out.push('\x07'),
                Some('b') => out.push('\x08'),
                Some('f') => out.push('\x0c'),
                Some('v') => out.push('\x0b'),
                Some('/') => out.push('/'),
                Some('\n') => {}
                Some(c @ ('\\' | '\'' | '"')) => out.push(c),
                Some(k @ ('x' | 'u' | 'U')) => {
                    let n = match k {
                        'x' => 2,
                        'u' => 4,
                        _ => 8,
                    };
                    let mut code = hex(chars, n)?;
                    if (0xd800..0xdc00).contains(&code) && chars.peek() == Some(&'\\') {
                        // A JSON surrogate pair.
                        let mut look = chars.clone();
                        look.next();
                        if look.next() == Some('u') {
                            chars.next();
                            chars.next();
                            let low = hex(chars, 4)?;
                            code = 0x10000
                                + ((code - 0xd800) << 10)
                                + (low.wrapping_sub(0xdc00) & 0x3ff);
                        }
                    }
                    out.push(
                        char::from_u32(code).ok_or_else(|| format!("bad code point {code:#x}"))?,
                    );
                }
                Some(other) => {
                    out.push('\\');
                    out.push(other);
                }
                None => return Err("unterminated string".into()),
            },
            Some(c) => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(src: &str, ctx: serde_json::Value) -> Result<String, Error> {
        make_env().render_str(src, Value::from_serialize(&ctx))
    }

    #[test]
    fn python_list_literals() {
        assert_eq!(
            parse_python_list("['a', \"b's\", 'c\\'d']"),
            Ok(vec!["a".into(), "b's".into(), "c'd".into()])
        );
        assert_eq!(
            parse_python_list("[\"\\u00e9\", 'x',]"),
            Ok(vec!["é".into(), "x".into()])
        );
        assert_eq!(parse_python_list("[]"), Ok(vec![]));
        assert!(parse_python_list("['a' 'b']").is_err());
        assert!(parse_python_list("[1, 2]").is_err());
    }

    #[test]
    fn python_methods_and_printing() {
        let doc = serde_json::json!({"l": ["A", "B", "C"], "k": "C", "s": "  Hi There.  ", "b": true, "n": null});
        assert_eq!(render("{{ l.index(k) }}", doc.clone()).expect("ok"), "2");
        assert_eq!(
            render("{{ s.strip()[:-1] }}|{{ s.lower().strip() }}", doc.clone()).expect("ok"),
            "Hi There|hi there."
        );
        assert_eq!(
            render("{{ l }} {{ b }} {{ n }}", doc.clone()).expect("ok"),
            "['A', 'B', 'C'] True None"
        );
        assert!(render("{{ l.index('Z') }}", doc.clone()).is_err());
        // Python dicts keep insertion order (needs minijinja's `preserve_order`).
        let d = serde_json::json!({"d": {"b": 1, "a": [2.5, "x"]}});
        assert_eq!(
            render("{{ d }} {{ d.keys()|list }}", d).expect("ok"),
            "{'b': 1, 'a': [2.5, 'x']} ['b', 'a']"
        );
        assert!(render("{{ missing }}", doc).is_err());
    }

    #[test]
    fn regex_replace_filter() {
        let doc = serde_json::json!({"t": "a [title] b [step] c  d"});
        let out = render("{{ t|replace(' [title]', '. ')|regex_replace('\\\\[.*?\\\\]', '')|replace('  ', ' ') }}", doc);
        assert_eq!(out.expect("ok"), "a. b c d");
        let doc = serde_json::json!({"t": "ab"});
        assert_eq!(
            render("{{ t|regex_replace('(a)(b)', '\\\\2\\\\1$') }}", doc).expect("ok"),
            "ba$"
        );
    }
}
