//! The "Examples:" block of every command's `--help`, in one table keyed by
//! the command's path. A command that sets its own `after_help` keeps it; a
//! command in neither place fails the unit test that walks the command tree
//! (`cli_tests::every_command_shows_an_example`).

use clap::Command;

/// `(command path, example lines)`; the path is the subcommand names after `hale`.
const EXAMPLES: &[(&str, &str)] = &[
    (
        "",
        "hale serve --demo                      # a node with the synthetic health board on 127.0.0.1:8080
  hale doctor --url http://127.0.0.1:8080 --token demo-admin
  hale up --nodes 3 --learners 2         # a local cluster of separate processes",
    ),
    (
        "serve",
        "hale serve --demo
  hale serve --config /etc/hale/hale.toml
  hale serve --node-id 2 --raft-listen 10.0.0.6:7080 --listen 0.0.0.0:8080 --site DC2 --data /var/lib/hale",
    ),
    (
        "import",
        "hale import --url http://127.0.0.1:8080 --token demo-admin patients.ndjson bundles/",
    ),
    (
        "export",
        "hale export --data /var/lib/hale --out ./export
  hale export --url http://127.0.0.1:8080 --token demo-admin --type Patient,Appointment --out ./export",
    ),
    ("record-hash", "hale record-hash --data /var/lib/hale"),
    (
        "bench",
        "hale bench read --url http://127.0.0.1:8080 --token demo-admin --duration-s 20
  hale bench failover --trials 10",
    ),
    (
        "cluster",
        "hale cluster status --url http://127.0.0.1:8080 --token demo-admin",
    ),
    (
        "cluster init",
        "hale cluster init --url http://10.0.0.5:8080 --token $ADMIN_TOKEN",
    ),
    (
        "cluster add-learner",
        "hale cluster add-learner --url http://10.0.0.5:8080 --token $ADMIN_TOKEN \\
      --node-id 4 --raft-addr 10.1.0.9:7080 --api-url https://qeh.hale.nhs.example --site QEH",
    ),
    (
        "cluster promote",
        "hale cluster promote --url http://10.0.0.5:8080 --token $ADMIN_TOKEN --node-id 2",
    ),
    (
        "cluster remove",
        "hale cluster remove --url http://10.0.0.5:8080 --token $ADMIN_TOKEN --node-id 4",
    ),
    (
        "cluster status",
        "hale cluster status --url http://127.0.0.1:8080 --token demo-admin
  hale cluster status --json | jq '.members[] | {id, reachable}'",
    ),
    (
        "sync",
        "hale sync status --url http://10.1.0.9:8080 --token $ADMIN_TOKEN",
    ),
    (
        "sync status",
        "hale sync status --url http://10.1.0.9:8080 --token $ADMIN_TOKEN",
    ),
    (
        "sync verify",
        "hale sync verify --url http://10.1.0.9:8080 --token $ADMIN_TOKEN",
    ),
    (
        "sync journal",
        "hale sync journal --url http://10.1.0.9:8080 --token $ADMIN_TOKEN --status pending --limit 20",
    ),
    (
        "up",
        "hale up                                # 3 voters and 2 learners in ./hale-cluster
  hale up --nodes 3 --learners 0 --demo-patients 200",
    ),
    (
        "chaos",
        "hale chaos --faults 20 --seed 7
  hale chaos --voters 5 --learners 2 --faults 50 --json",
    ),
    (
        "outage",
        "hale outage list --url http://127.0.0.1:8080 --token demo-admin",
    ),
    (
        "outage declare",
        "hale outage declare --start now --site QEH --description \"PAS down\" --token demo-admin",
    ),
    ("outage list", "hale outage list --format csv --token demo-admin"),
    ("outage show", "hale outage show 5f0c... --token demo-admin"),
    (
        "outage close",
        "hale outage close 5f0c... --end 2026-12-03T14:30 --token demo-admin",
    ),
    (
        "outage postpone",
        "hale outage postpone --incident 5f0c... --clinic-closed --site QEH --token demo-admin",
    ),
    (
        "outage report",
        "hale outage report --incident 5f0c... --format csv --token demo-admin > report.csv
  hale outage report --incident 5f0c... --token demo-admin | head",
    ),
    (
        "outage rebook",
        "hale outage rebook --incident 5f0c... --dry-run --token demo-admin
  hale outage rebook --incident 5f0c... --notice-days 14 --token demo-admin",
    ),
    (
        "downtime-pack",
        "hale downtime-pack --data /var/lib/hale --site QEH --out /srv/downtime --recipient age1...",
    ),
    (
        "backfill",
        "hale backfill --incident 5f0c... --url http://127.0.0.1:8080 --token demo-admin",
    ),
    ("user", "hale user list --token demo-admin"),
    (
        "user add",
        "hale user add j.smith --role clinician --name \"Dr Jane Smith\" --token demo-admin",
    ),
    ("user passwd", "hale user passwd j.smith --token demo-admin"),
    ("user disable", "hale user disable j.smith --token demo-admin"),
    ("user enable", "hale user enable j.smith --token demo-admin"),
    ("user list", "hale user list --json --token demo-admin"),
    (
        "cert",
        "hale cert init --dir /etc/hale/ca
  hale cert issue --dir /etc/hale/ca --name node1 --node-id 1 --role voter",
    ),
    (
        "cert init",
        "hale cert init --dir /etc/hale/ca --cn \"Example Trust Hale CA\"",
    ),
    (
        "cert issue",
        "hale cert issue --dir /etc/hale/ca --name node1 --node-id 1 --role voter
  hale cert issue --dir /etc/hale/ca --name api --dns hale.example.nhs.uk --ip 10.0.0.5
  hale cert issue --dir /etc/hale/ca --name ops --operator",
    ),
    ("audit", "hale audit verify --data /var/lib/hale"),
    ("audit verify", "hale audit verify --data /var/lib/hale"),
    (
        "doctor",
        "hale doctor --url http://127.0.0.1:8080 --token demo-admin
  hale doctor --config /etc/hale/hale.toml --token $ADMIN_TOKEN",
    ),
];

/// `cmd` (and every subcommand, at any depth) with its "Examples:" block,
/// unless it already has an `after_help` of its own.
pub fn add(cmd: Command) -> Command {
    add_at(cmd, "")
}

fn add_at(mut cmd: Command, path: &str) -> Command {
    if cmd.get_after_help().is_none() && cmd.get_after_long_help().is_none() {
        if let Some((_, text)) = EXAMPLES.iter().find(|(p, _)| *p == path) {
            cmd = cmd.after_help(format!("Examples:\n  {text}"));
        }
    }
    let names: Vec<String> = cmd.get_subcommands().map(|s| s.get_name().to_string()).collect();
    for name in names {
        let sub_path = if path.is_empty() {
            name.clone()
        } else {
            format!("{path} {name}")
        };
        cmd = cmd.mut_subcommand(&name, |s| add_at(s, &sub_path));
    }
    cmd
}
