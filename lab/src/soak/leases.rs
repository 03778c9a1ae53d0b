//! Whether any node lost its lease during the soak, from two independent sources: etcd's own
//! history of the lease keys (replayed with a watch from the revision the soak started at)
//! and what the agents logged.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Context;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use twill_testbed::Etcd;

/// Where the agents keep their leases (twilld's default `--etcd-prefix`).
const SUBNETS: &str = "/coreos.com/network/subnets/";

/// What etcd and the logs say about the leases over the soak.
#[derive(Debug, Default)]
pub struct LeaseReport {
    /// Lease keys deleted (expired or removed): `(key, revision)`.
    pub deleted: Vec<(String, i64)>,
    /// Keys that appeared during the soak (a node leased a new subnet).
    pub new_keys: Vec<String>,
    /// Per key, how often its etcd lease id changed (a restarted twilld takes its key back
    /// under a new lease; anything beyond that is a lost lease).
    pub lease_changes: BTreeMap<String, usize>,
    /// Log lines of each kind, summed over the hosts, with the first few lines quoted.
    pub log: BTreeMap<&'static str, Vec<String>>,
}

/// Log lines that tell the lease story, by what they mean.
pub const LOG_SIGNS: [(&str, &str); 5] = [
    ("re-acquiring", "re-acquisitions (lease lost)"),
    ("the old subnet was taken", "subnet moved"),
    ("renewing the lease of", "renewals failed, retried"),
    ("lost the etcd watch", "watches lost, re-listed"),
    ("etcd answers again", "etcd answered again"),
];

/// Where the soak starts: etcd's revision and each agent log's length.
pub struct Start {
    revision: i64,
    leases: BTreeMap<String, i64>,
    logs: Vec<(PathBuf, u64)>,
}

impl Start {
    pub fn take(etcd: &Etcd, logs: &[PathBuf]) -> anyhow::Result<Start> {
        let out = etcd.etcdctl(&["get", SUBNETS, "--prefix", "-w", "json"])?;
        let v: serde_json::Value = serde_json::from_str(&out).context("etcdctl get -w json")?;
        let revision = v["header"]["revision"]
            .as_i64()
            .context("no revision in etcdctl's answer")?;
        let leases = v["kvs"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|kv| (decode(&kv["key"]), kv["lease"].as_i64().unwrap_or(0)))
            .collect();
        let logs = logs
            .iter()
            .map(|p| {
                (
                    p.clone(),
                    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0),
                )
            })
            .collect();
        Ok(Start {
            revision,
            leases,
            logs,
        })
    }

    /// Replays every change of the lease keys since the start and reads the logs' new lines.
    pub fn report(&self, etcd: &Etcd) -> anyhow::Result<LeaseReport> {
        let mut r = LeaseReport::default();
        let mut lease = self.leases.clone();
        for (kind, key, id, revision) in self.history(etcd)? {
            if kind == "DELETE" {
                r.deleted.push((key.clone(), revision));
                lease.remove(&key);
                continue;
            }
            match lease.insert(key.clone(), id) {
                None if !self.leases.contains_key(&key) => r.new_keys.push(key),
                Some(old) if old != id => *r.lease_changes.entry(key).or_default() += 1,
                _ => {}
            }
        }
        for (path, from) in &self.logs {
            for line in new_lines(path, *from)? {
                if let Some((sign, _)) = LOG_SIGNS.iter().find(|(s, _)| line.contains(s)) {
                    r.log.entry(sign).or_default().push(line);
                }
            }
        }
        Ok(r)
    }

    /// `(PUT|DELETE, key, lease id, revision)` of every event since the start, from a watch
    /// that replays history and is ended (by PID) once it has been quiet for a while.
    fn history(&self, etcd: &Etcd) -> anyhow::Result<Vec<(String, String, i64, i64)>> {
        let rev = (self.revision + 1).to_string();
        let mut child = etcd
            .etcdctl_command(&["watch", "--prefix", SUBNETS, "--rev", &rev, "-w", "json"])?
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting etcdctl watch")?;
        let stdout = child.stdout.take().context("etcdctl's stdout")?;
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut events = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        // The replay comes at once; two quiet seconds mean it is over.
        while let Ok(line) = rx.recv_timeout(Duration::from_secs(2)) {
            events.extend(parse_watch_line(&line));
            if Instant::now() > deadline {
                break;
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        let _ = reader.join();
        Ok(events)
    }
}

/// One line of `etcdctl watch -w json` (a whole watch response) → its events.
fn parse_watch_line(line: &str) -> Vec<(String, String, i64, i64)> {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
        return Vec::new();
    };
    let events = v.get("Events").or_else(|| v.get("events"));
    events
        .and_then(|e| e.as_array())
        .into_iter()
        .flatten()
        .map(|e| {
            // Go's JSON omits the zero value: no type is a PUT, 1 a DELETE.
            let kind = match &e["type"] {
                serde_json::Value::Number(n) if n.as_i64() == Some(1) => "DELETE",
                serde_json::Value::String(s) if s == "DELETE" => "DELETE",
                _ => "PUT",
            };
            let kv = &e["kv"];
            (
                kind.to_string(),
                decode(&kv["key"]),
                kv["lease"].as_i64().unwrap_or(0),
                kv["mod_revision"].as_i64().unwrap_or(0),
            )
        })
        .collect()
}

/// etcdctl's JSON holds keys base64-encoded.
fn decode(v: &serde_json::Value) -> String {
    let raw = v.as_str().unwrap_or_default();
    BASE64
        .decode(raw)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_else(|_| raw.to_string())
}

fn new_lines(path: &Path, from: u64) -> anyhow::Result<Vec<String>> {
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    f.seek(SeekFrom::Start(from))?;
    let mut text = String::new();
    f.read_to_string(&mut text)?;
    Ok(text.lines().map(str::to_string).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_watch_response_gives_puts_and_deletes() {
        let key = BASE64.encode("/coreos.com/network/subnets/10.244.3.0-24");
        let line = format!(
            r#"{{"Header":{{"revision":40}},"Events":[{{"kv":{{"key":"{key}","mod_revision":39,"lease":7}}}},{{"type":1,"kv":{{"key":"{key}","mod_revision":40}}}}],"CompactRevision":0}}"#
        );
        let ev = parse_watch_line(&line);
        assert_eq!(ev.len(), 2);
        assert_eq!(ev[0].0, "PUT");
        assert_eq!(ev[0].1, "/coreos.com/network/subnets/10.244.3.0-24");
        assert_eq!((ev[0].2, ev[0].3), (7, 39));
        assert_eq!(ev[1].0, "DELETE");
        assert!(parse_watch_line("not json").is_empty());
    }
}
