//! One cluster per process, shared by every test in it.
//!
//! A `static` is never dropped, so the shared cluster is torn down by an `atexit` handler:
//! libtest leaves `main` (or calls `process::exit` when a test failed), and both run it.
//! A process killed outright cannot run it; the next start's sweep removes what it left.

use std::sync::OnceLock;

use super::{Cluster, Error, Result};

static SHARED: OnceLock<std::result::Result<Cluster, String>> = OnceLock::new();

extern "C" fn teardown_shared() {
    if let Some(Ok(cluster)) = SHARED.get() {
        cluster.teardown();
    }
}

impl Cluster {
    /// The process-wide cluster with default options, started on first use. Its failure is
    /// remembered, so every later caller sees the same message.
    pub fn try_shared() -> Result<&'static Cluster> {
        let cell = SHARED.get_or_init(|| {
            let started = Cluster::builder().start().map_err(|e| e.to_string());
            if started.is_ok() {
                // SAFETY: registers a plain `extern "C" fn` with no captured state. If
                // registration fails, the next start's sweep removes the cluster instead.
                unsafe { libc::atexit(teardown_shared) };
            }
            started
        });
        cell.as_ref()
            .map_err(|message| Error::Shared(message.clone()))
    }

    /// [`try_shared`](Self::try_shared), panicking with the reason when the cluster cannot
    /// start: for tests, where that is the right outcome.
    pub fn shared() -> &'static Cluster {
        match Cluster::try_shared() {
            Ok(cluster) => cluster,
            Err(e) => panic!("{e}"),
        }
    }
}
