//! Peak-RSS measurement checked on a child process that allocates a known
//! buffer (the test binary re-runs itself with a marker variable).

use slmbench::measure::{peak_rss, rss_bytes, start_peak_window, RssSampler, RssScope};

const CHILD: &str = "SLMBENCH_RSS_CHILD";
const BUFFER: usize = 256 << 20;

#[test]
fn peak_rss_of_a_child_that_allocates_a_known_buffer() {
    if std::env::var(CHILD).is_ok() {
        let scope = start_peak_window();
        let sampler = RssSampler::start();
        let before = peak_rss(scope).expect("peak").bytes;
        let buf = vec![7u8; BUFFER];
        std::hint::black_box(&buf);
        // Hold the buffer for many sampling intervals.
        std::thread::sleep(std::time::Duration::from_millis(200));
        let sampled = sampler.stop().expect("sampled");
        let after = peak_rss(scope).expect("peak").bytes;
        println!(
            "PEAK {before} {after} {} {sampled}",
            scope == RssScope::Cell
        );
        return;
    }
    if rss_bytes().is_none() {
        eprintln!("notice: no /proc/self/status here; skipping");
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().expect("exe"))
        .args([
            "--exact",
            "measure::peak_rss_of_a_child_that_allocates_a_known_buffer",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CHILD, "1")
        .output()
        .expect("child");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find_map(|l| l.find("PEAK ").map(|i| &l[i..]))
        .unwrap_or_else(|| panic!("no PEAK line in: {text}"));
    let f: Vec<&str> = line.split_whitespace().collect();
    let (before, after): (u64, u64) = (f[1].parse().expect("n"), f[2].parse().expect("n"));
    let sampled: u64 = f[4].parse().expect("n");
    // The sampler reads RSS inside the high-water-mark window: never above it,
    // and it saw the buffer, held for 20 intervals.
    // (up to the kernel's batched per-thread RSS counters: a few dozen pages)
    assert!(
        sampled <= after + (1 << 20),
        "sampled {sampled} > VmHWM {after}"
    );
    assert!(
        sampled >= before + BUFFER as u64 - (4 << 20),
        "sampled {sampled}"
    );
    let grew = after - before;
    // The touched buffer, give or take the allocator and page-table slack.
    assert!(grew >= BUFFER as u64 - (4 << 20), "grew {grew}");
    assert!(grew <= BUFFER as u64 + (32 << 20), "grew {grew}");
}
