//! Ctrl-C and SIGTERM: the first asks the run to stop at the next batch boundary (between
//! steps, between a lone replica's micro-batches, between the batches of a validation or of
//! the final evaluation) and to save a checkpoint of the last completed step; a second one
//! exits at once (checkpoints are written atomically, so even that loses at most the steps
//! since the last one).

use std::sync::Once;
use std::sync::atomic::{AtomicBool, Ordering};

static REQUESTED: AtomicBool = AtomicBool::new(false);
static INSTALL: Once = Once::new();

/// Installs the handler (once per process).
pub fn install() {
    INSTALL.call_once(|| {
        let installed = ctrlc::set_handler(|| {
            if REQUESTED.swap(true, Ordering::SeqCst) {
                eoutln!("\nsecond interrupt: exiting without a final checkpoint");
                std::process::exit(130);
            }
            eoutln!("\ninterrupt: stopping at the next batch and saving a checkpoint (press Ctrl-C again to exit now)");
        });
        if let Err(e) = installed {
            eoutln!("warning: cannot handle Ctrl-C ({e}); an interrupted run resumes from its last checkpoint");
        }
    });
}

/// Whether a stop was requested.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}
