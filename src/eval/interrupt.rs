//! SIGINT and SIGTERM during a run: the first asks the run to stop after
//! the document in flight is written (`requested` turns `Some`); a second
//! exits at once with 128 + the signal number.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use signal_hook::consts::{SIGINT, SIGTERM};

struct State {
    flag: Arc<AtomicBool>,
    which: Arc<AtomicUsize>,
}

static STATE: OnceLock<State> = OnceLock::new();

/// Installs the handlers (once; later calls do nothing).
pub fn install() -> std::io::Result<()> {
    if STATE.get().is_some() {
        return Ok(());
    }
    let flag = Arc::new(AtomicBool::new(false));
    let which = Arc::new(AtomicUsize::new(0));
    for sig in [SIGINT, SIGTERM] {
        // Registered first, so it sees the flag as the previous signal left it.
        signal_hook::flag::register_conditional_shutdown(sig, 128 + sig, flag.clone())?;
        signal_hook::flag::register_usize(sig, which.clone(), sig as usize)?;
        signal_hook::flag::register(sig, flag.clone())?;
    }
    let _ = STATE.set(State { flag, which });
    Ok(())
}

/// The signal that asked the run to stop, if one did.
pub fn requested() -> Option<i32> {
    let s = STATE.get()?;
    s.flag
        .load(Ordering::SeqCst)
        .then(|| s.which.load(Ordering::SeqCst) as i32)
}
