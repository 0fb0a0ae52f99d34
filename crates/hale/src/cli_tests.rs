//! Unit tests of the CLI's shape: every command's help has an example, and
//! the default log filter keeps openraft's INFO lines out.

use super::*;
use clap::CommandFactory;

/// Paths of commands (below `hale`) whose help has no "Example" block.
fn without_examples(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
    let help = cmd
        .get_after_help()
        .or(cmd.get_after_long_help())
        .map(|h| h.to_string())
        .unwrap_or_default();
    if !help.contains("Example") {
        missing.push(if path.is_empty() {
            "hale".into()
        } else {
            format!("hale {path}")
        });
    }
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        let sub_path = if path.is_empty() {
            sub.get_name().to_string()
        } else {
            format!("{path} {}", sub.get_name())
        };
        without_examples(sub, &sub_path, missing);
    }
}

#[test]
fn every_command_shows_an_example() {
    let cmd = examples::add(Cli::command());
    cmd.clone().debug_assert();
    let mut missing = Vec::new();
    without_examples(&cmd, "", &mut missing);
    assert!(
        missing.is_empty(),
        "these commands' --help has no \"Examples:\" block; add one to the table in examples.rs \
         (or an `after_help` on the command): {missing:?}"
    );
    // Subcommands of subcommands are covered too.
    let report = cmd
        .find_subcommand("outage")
        .and_then(|o| o.find_subcommand("report"))
        .unwrap();
    assert!(report
        .get_after_help()
        .unwrap()
        .to_string()
        .contains("hale outage report"));
}

#[test]
fn default_log_filter_hides_openraft_info() {
    assert_eq!(log_filter_directives(None, None), LOG_FILTER_DEFAULT);
    assert_eq!(log_filter_directives(None, Some(" ".into())), LOG_FILTER_DEFAULT);
    assert_eq!(log_filter_directives(None, Some("debug".into())), "debug");
    assert_eq!(
        log_filter_directives(Some("trace".into()), Some("debug".into())),
        "trace"
    );

    let enabled = |directives: &str, target_info: bool| {
        let filter = tracing_subscriber::EnvFilter::try_new(directives).unwrap();
        let subscriber = tracing_subscriber::fmt().with_env_filter(filter).finish();
        tracing::subscriber::with_default(subscriber, || {
            (
                tracing::enabled!(target: "openraft::engine::engine_impl", tracing::Level::INFO),
                tracing::enabled!(target: "openraft::core::raft_core", tracing::Level::WARN),
                tracing::enabled!(target: "hale_raft::node", tracing::Level::INFO) && target_info,
            )
        })
    };
    // Default: openraft's INFO off, its warnings and Hale's INFO on.
    assert_eq!(enabled(&log_filter_directives(None, None), true), (false, true, true));
    // RUST_LOG (or HALE_LOG) brings them back.
    assert_eq!(
        enabled(&log_filter_directives(None, Some("info".into())), true),
        (true, true, true)
    );
}
