//! `walshift demo`, the README's main job, at a small size: the whole
//! rolling deploy on its own throwaway PostgreSQL, ending with both shapes
//! equal (judged by the demo with plain SQL) and the cluster removed.

use std::time::Duration;

#[tokio::test]
async fn demo_runs_the_rolling_deploy_and_ends_with_both_shapes_equal() {
    let out = tokio::time::timeout(
        Duration::from_secs(180),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_walshift"))
            .args([
                "demo",
                "--users",
                "3000",
                "--orders",
                "1500",
                "--writers",
                "2",
                "--phase",
                "2s",
            ])
            .env_remove("RUST_LOG")
            .output(),
    )
    .await
    .expect("the demo finishes within 3 minutes")
    .expect("run walshift demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for line in [
        "walshift demo summary",
        "both versions:",
        "rollback:",
        "verify:               0 differences",
        "both shapes equal:    0 rows inconsistent",
        "result:               cut over; both shapes equal; the cluster was removed",
    ] {
        assert!(
            stdout.contains(line),
            "{line:?} missing:\n{stdout}\n{stderr}"
        );
    }
    assert!(
        stderr.contains("roll back: the new version stops"),
        "{stderr}"
    );
}
