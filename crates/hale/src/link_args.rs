//! `--link-rtt-ms`, `--link-jitter-ms`, `--link-mbit`: emulate the links
//! between nodes of a local cluster (a WAN between data centres) with the raft
//! transport's fault injection, since these machines have no `netem`.

use clap::Args;

#[derive(Args, Debug, Clone, Default)]
pub struct LinkArgs {
    /// Emulate this round-trip time on every raft link (e.g. 10 between data centres).
    #[arg(long, default_value_t = 0)]
    pub link_rtt_ms: u64,
    /// Emulate up to this much extra delay per message, drawn from a seeded generator.
    #[arg(long, default_value_t = 0)]
    pub link_jitter_ms: u64,
    /// Emulate a bandwidth cap on every raft link, in Mbit/s per direction (0: none).
    #[arg(long, default_value_t = 0)]
    pub link_mbit: u64,
}

impl LinkArgs {
    /// True when any link emulation is asked for (the nodes then need fault injection).
    pub fn emulated(&self) -> bool {
        self.link_rtt_ms > 0 || self.link_jitter_ms > 0 || self.link_mbit > 0
    }

    /// The `[cluster]` TOML line that sets it on every node.
    pub fn cluster_toml(&self) -> String {
        if !self.emulated() {
            return String::new();
        }
        format!(
            "emulate_link = {{ rtt_ms = {}, jitter_ms = {}, mbit = {} }}\n",
            self.link_rtt_ms, self.link_jitter_ms, self.link_mbit
        )
    }

    pub fn describe(&self) -> String {
        if !self.emulated() {
            return "plain loopback links".into();
        }
        let bw = if self.link_mbit > 0 {
            format!("{} Mbit/s", self.link_mbit)
        } else {
            "no bandwidth cap".into()
        };
        format!(
            "emulated links: {} ms round trip, up to {} ms jitter, {bw}",
            self.link_rtt_ms, self.link_jitter_ms
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_parses_into_the_cluster_settings() {
        let a = LinkArgs {
            link_rtt_ms: 10,
            link_jitter_ms: 2,
            link_mbit: 100,
        };
        let s: hale_raft::RaftSettings = toml::from_str(&a.cluster_toml()).unwrap();
        let l = s.emulate_link.unwrap();
        assert_eq!((l.rtt_ms, l.jitter_ms, l.mbit), (10, 2, 100));
        assert_eq!(LinkArgs::default().cluster_toml(), "");
    }
}
