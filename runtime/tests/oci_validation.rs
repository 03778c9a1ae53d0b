//! The runtime-spec checks of opencontainers/runtime-tools' `validation/` suite and its
//! in-container `runtimetest`, ported (their Go suite needs modules this machine cannot fetch):
//! lifecycle and state, pid file, hooks, process, root, mounts, default filesystems, devices
//! and symlinks, masked and read-only paths, sysctl, namespaces (new, inherited, joined by
//! path), rootfs propagation and cgroup resources.
//!
//! `validate(runtime)` runs every check against one OCI runtime binary and returns what it
//! failed; the test runs it for twill-oci, runc and crun (when installed), prints the table of
//! check × runtime, and fails when twill-oci fails a check runc passes unless the check is in
//! `KNOWN_GAPS` (the to-do list; an entry that passes now must leave it).
//!
//! In-container probes are busybox shell writing to `/out`, a directory bound from the host;
//! the namespace and cgroup checks read `/proc/<pid>` and `/sys/fs/cgroup` from outside, as
//! runtime-tools does. State lives under a temporary `--root`; every container is deleted by a
//! guard, also when a check panics.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use twill_tests::{busybox_present, preconditions};

const TWILL_OCI: &str = env!("CARGO_BIN_EXE_twill-oci");

/// Checks twill-oci fails while runc passes them: the to-do list. The test fails when one of
/// these passes (remove it then) or when a check outside it regresses.
const KNOWN_GAPS: &[&str] = &[];

/// One check a runtime failed, with what was seen.
#[derive(Debug, Clone)]
struct Failure {
    check: &'static str,
    detail: String,
}

type Outcome = Result<(), String>;

macro_rules! ensure {
    ($cond:expr, $($fmt:tt)*) => {
        if $cond { Ok(()) } else { Err(format!($($fmt)*)) }
    };
}

/// A set of checks sharing containers; a setup error fails every check it did not reach.
struct Group {
    checks: &'static [&'static str],
    run: fn(&Env, &mut Rows) -> Outcome,
}

struct Rows(Vec<(&'static str, Outcome)>);

impl Rows {
    fn put(&mut self, check: &'static str, outcome: Outcome) {
        self.0.push((check, outcome));
    }
}

const GROUPS: &[Group] = &[
    Group {
        checks: &[
            "create.state-created",
            "state.fields",
            "pidfile",
            "create.process-waits",
            "create.duplicate-id-refused",
            "start.runs-process",
            "root.writable",
            "start.twice-refused",
            "delete.running-refused",
            "state.stopped-after-exit",
            "kill.stopped-refused",
            "start.stopped-refused",
            "delete.stopped",
            "delete.removes-cgroups",
        ],
        run: lifecycle,
    },
    Group {
        checks: &["delete.created-refused", "kill.created"],
        run: created_ops,
    },
    Group {
        checks: &["kill.signal-delivered"],
        run: kill_signals,
    },
    Group {
        checks: &[
            "unknown-id.state",
            "unknown-id.start",
            "unknown-id.kill",
            "unknown-id.delete",
            "create.no-id-refused",
        ],
        run: unknown_ids,
    },
    Group {
        checks: &[
            "config.unknown-ignored",
            "config.invalid-version-refused",
            "create.config-snapshot",
            "process.capabilities-unknown-refused",
            "process.rlimits-unknown-refused",
        ],
        run: config_props,
    },
    Group {
        checks: &[
            "hooks.prestart",
            "hooks.poststart",
            "hooks.poststop",
            "hooks.env",
        ],
        run: hooks,
    },
    Group {
        checks: &["hooks.prestart-fail-stops"],
        run: hook_prestart_fail,
    },
    Group {
        checks: &["hooks.poststart-fail-continues"],
        run: hook_poststart_fail,
    },
    Group {
        checks: &["hooks.poststop-fail-continues"],
        run: hook_poststop_fail,
    },
    Group {
        checks: &["hooks.timeout"],
        run: hook_timeout,
    },
    Group {
        checks: &[
            "process.args",
            "process.env",
            "process.cwd",
            "process.user",
            "process.additional-gids",
            "process.umask",
            "process.rlimits",
            "process.no-new-privileges",
            "process.capabilities",
            "process.oom-score-adj",
        ],
        run: process_non_root,
    },
    Group {
        checks: &[
            "hostname",
            "domainname",
            "default-fs",
            "default-devices",
            "default-symlinks",
            "masked-paths",
            "readonly-paths",
            "process.no-new-privileges-false",
            "process.capabilities-root",
        ],
        run: filesystem_basics,
    },
    Group {
        checks: &[
            "root.readonly",
            "mounts.in-order",
            "mounts.bind-options",
            "mounts.tmpfs-options",
            "mounts.nested",
        ],
        run: mounts,
    },
    Group {
        checks: &["linux.devices.char"],
        run: device_char,
    },
    Group {
        checks: &["linux.devices.fifo"],
        run: device_fifo,
    },
    Group {
        checks: &["sysctl"],
        run: sysctl,
    },
    Group {
        checks: &["namespaces.new", "namespaces.inherited"],
        run: namespaces_new,
    },
    Group {
        checks: &[
            "namespaces.path-net",
            "namespaces.path-ipc",
            "namespaces.path-uts",
            "namespaces.path-pid",
            "namespaces.path-mnt",
            "namespaces.path-wrong-type-refused",
            "delete.keeps-joined-namespaces",
        ],
        run: namespaces_by_path,
    },
    Group {
        checks: &["namespaces.user-mappings"],
        run: user_mappings,
    },
    Group {
        checks: &["seccomp.errno"],
        run: seccomp,
    },
    Group {
        checks: &[
            "rootfs-propagation.shared",
            "rootfs-propagation.slave",
            "rootfs-propagation.private",
            "rootfs-propagation.unbindable",
        ],
        run: rootfs_propagation,
    },
    Group {
        checks: &[
            "cgroups.path",
            "cgroups.memory",
            "cgroups.cpu",
            "cgroups.pids",
            "cgroups.devices-deny",
        ],
        run: cgroups,
    },
    Group {
        checks: &["cgroups.relative-path"],
        run: cgroups_relative,
    },
    Group {
        checks: &["cgroups.blkio-throttle"],
        run: cgroups_blkio,
    },
];

fn all_checks() -> impl Iterator<Item = &'static str> {
    GROUPS.iter().flat_map(|g| g.checks.iter().copied())
}

/// Runs every check against the OCI runtime at `runtime`; returns the failed ones.
fn validate(runtime: &Path) -> Vec<Failure> {
    let env = Env::new(runtime);
    let mut failures = Vec::new();
    for g in GROUPS {
        let mut rows = Rows(Vec::new());
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| (g.run)(&env, &mut rows)));
        let setup = match result {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e),
            Err(p) => Some(format!(
                "panicked: {}",
                p.downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default()
            )),
        };
        for (name, _) in &rows.0 {
            assert!(g.checks.contains(name), "check {name} is not declared");
        }
        for &check in g.checks {
            let outcome = match rows.0.iter().find(|(n, _)| *n == check) {
                Some((_, o)) => o.clone(),
                None => Err(setup.clone().unwrap_or_else(|| "not reached".to_string())),
            };
            if let Err(detail) = outcome {
                failures.push(Failure { check, detail });
            }
        }
    }
    failures
}

// ---- the runtime under test, bundles and containers ----

/// One runtime's environment: its binary, a temporary directory with its `--root` and the
/// bundles.
struct Env {
    bin: PathBuf,
    label: String,
    tmp: tempfile::TempDir,
    seq: AtomicU32,
}

/// A finished runtime command.
struct Ran {
    ok: bool,
    out: String,
    err: String,
}

impl Env {
    fn new(bin: &Path) -> Env {
        let label = bin
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = tempfile::tempdir().expect("a temporary directory");
        // A user namespace's root is nobody here: it must reach the bundles.
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755))
            .expect("chmod of the temporary directory");
        Env {
            bin: bin.to_path_buf(),
            label,
            tmp,
            seq: AtomicU32::new(0),
        }
    }

    fn next(&self) -> u32 {
        self.seq.fetch_add(1, Ordering::Relaxed)
    }

    /// A container id unique on this machine.
    fn unique(&self, tag: &str) -> String {
        format!(
            "twval-{}-{}-{tag}{}",
            self.label,
            std::process::id(),
            self.next()
        )
    }

    /// Runs the runtime with `--root`; stdio goes to files (a created container keeps the
    /// descriptors, so a pipe would never reach EOF), and a hung command is killed.
    fn rt(&self, args: &[&str]) -> Result<Ran, String> {
        let n = self.next();
        let out = self.tmp.path().join(format!("cmd{n}.out"));
        let err = self.tmp.path().join(format!("cmd{n}.err"));
        let file = |p: &Path| fs::File::create(p).map_err(|e| format!("{}: {e}", p.display()));
        // Not /dev/null: runc 1.1 chowns a container's stdio to the root of its user
        // namespace, and would change the host's /dev/null.
        let stdin = self.tmp.path().join("stdin");
        let mut child = Command::new(&self.bin)
            .arg("--root")
            .arg(self.tmp.path().join("state"))
            .args(args)
            .stdin(file(&stdin)?)
            .stdout(file(&out)?)
            .stderr(file(&err)?)
            .spawn()
            .map_err(|e| format!("running {}: {e}", self.bin.display()))?;
        let ok = wait_child(&mut child, Duration::from_secs(30))
            .map_err(|e| format!("{} {args:?}: {e}", self.label))?;
        Ok(Ran {
            ok,
            out: fs::read_to_string(&out).unwrap_or_default(),
            err: fs::read_to_string(&err).unwrap_or_default(),
        })
    }

    /// A bundle: a busybox root (`rootfs`) and `out`, bound on the container's `/out`.
    fn bundle(&self, tag: &str) -> Result<Bundle, String> {
        let dir = self.tmp.path().join(format!("{tag}-{}", self.next()));
        let rootfs = dir.join("rootfs");
        let io = |e: std::io::Error| format!("making the bundle {}: {e}", dir.display());
        for d in [
            "bin", "proc", "sys", "dev", "out", "tmp", "etc", "rodir", "maskdir", "mnt",
        ] {
            fs::create_dir_all(rootfs.join(d)).map_err(io)?;
        }
        fs::write(rootfs.join("maskfile"), "secret\n").map_err(io)?;
        fs::write(rootfs.join("maskdir/secret"), "secret\n").map_err(io)?;
        fs::copy("/bin/busybox", rootfs.join("bin/busybox")).map_err(io)?;
        for applet in [
            "sh", "cat", "echo", "sleep", "true", "false", "hostname", "grep", "ls", "touch",
            "stat", "readlink", "head", "wc", "mknod", "pwd", "id",
        ] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).map_err(io)?;
        }
        let out = dir.join("out");
        fs::create_dir_all(&out).map_err(io)?;
        // Non-root container processes write here too.
        fs::set_permissions(&out, fs::Permissions::from_mode(0o777)).map_err(io)?;
        Ok(Bundle {
            dir: dir.canonicalize().map_err(io)?,
            rootfs,
            out,
        })
    }

    fn container<'a>(&'a self, bundle: &Bundle, tag: &str) -> Ctr<'a> {
        Ctr {
            env: self,
            id: self.unique(tag),
            bundle: bundle.dir.clone(),
        }
    }
}

fn wait_child(child: &mut Child, limit: Duration) -> Result<bool, String> {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ok(status.success()),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("no answer in {limit:?}"));
            }
            Err(e) => return Err(format!("waiting: {e}")),
        }
    }
}

struct Bundle {
    dir: PathBuf,
    rootfs: PathBuf,
    out: PathBuf,
}

impl Bundle {
    /// A config.json like `runc spec`'s (no terminal), with `/out` and a `/tmp` tmpfs.
    fn config(&self, args: &[&str]) -> Value {
        json!({
            "ociVersion": "1.0.2",
            "process": {
                "terminal": false,
                "user": {"uid": 0, "gid": 0},
                "args": args,
                "env": ["PATH=/bin", "TERM=xterm"],
                "cwd": "/",
                "capabilities": {
                    "bounding": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
                    "effective": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
                    "permitted": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
                },
                "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
                "noNewPrivileges": true
            },
            "root": {"path": "rootfs", "readonly": false},
            "hostname": "twval",
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
                 "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
                {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
                 "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
                {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
                 "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
                {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
                 "options": ["nosuid", "noexec", "nodev"]},
                {"destination": "/sys", "type": "sysfs", "source": "sysfs",
                 "options": ["nosuid", "noexec", "nodev", "ro"]},
                {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid"]},
                {"destination": "/out", "type": "bind", "source": self.out, "options": ["rbind", "rw"]}
            ],
            "linux": {
                "resources": {"devices": [{"allow": false, "access": "rwm"}]},
                "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"},
                               {"type": "uts"}, {"type": "mount"}],
                "maskedPaths": ["/proc/kcore", "/proc/keys", "/sys/firmware"],
                "readonlyPaths": ["/proc/sys", "/proc/sysrq-trigger"]
            }
        })
    }

    fn write(&self, config: &Value) -> Outcome {
        let text = serde_json::to_vec_pretty(config).map_err(|e| e.to_string())?;
        fs::write(self.dir.join("config.json"), text).map_err(|e| format!("config.json: {e}"))
    }

    /// Writes `config(args)` changed by `f`.
    fn write_with(&self, args: &[&str], f: impl FnOnce(&mut Value)) -> Result<Value, String> {
        let mut c = self.config(args);
        f(&mut c);
        self.write(&c)?;
        Ok(c)
    }

    fn out(&self, file: &str) -> String {
        fs::read_to_string(self.out.join(file)).unwrap_or_default()
    }

    /// Waits until the container wrote `file` (10 s).
    fn wait_out(&self, file: &str) -> Result<String, String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let s = self.out(file);
            if !s.is_empty() {
                return Ok(s);
            }
            if Instant::now() > deadline {
                return Err(format!("the container never wrote /out/{file}"));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// A host command for hooks: the bundle's busybox.
    fn hook(&self, args: &[&str]) -> Value {
        json!({"path": self.rootfs.join("bin/busybox"), "args": args})
    }
}

/// A container id on one runtime; deleted (`--force`) on drop.
struct Ctr<'a> {
    env: &'a Env,
    id: String,
    bundle: PathBuf,
}

impl Ctr<'_> {
    fn create_with(&self, extra: &[&str]) -> Result<Ran, String> {
        let bundle = self.bundle.to_string_lossy();
        let mut args = vec!["create", "--bundle", &bundle];
        args.extend_from_slice(extra);
        args.push(&self.id);
        self.env.rt(&args)
    }

    fn create(&self) -> Outcome {
        let r = self.create_with(&[])?;
        ensure!(r.ok, "create failed: {}", r.err.trim())
    }

    fn op(&self, verb: &str) -> Result<Ran, String> {
        self.env.rt(&[verb, &self.id])
    }

    fn start(&self) -> Outcome {
        let r = self.op("start")?;
        ensure!(r.ok, "start failed: {}", r.err.trim())
    }

    fn kill(&self, signal: &str) -> Result<Ran, String> {
        self.env.rt(&["kill", &self.id, signal])
    }

    fn state(&self) -> Result<Value, String> {
        let r = self.op("state")?;
        if !r.ok {
            return Err(format!("state failed: {}", r.err.trim()));
        }
        serde_json::from_str(&r.out).map_err(|e| format!("state JSON {:?}: {e}", r.out))
    }

    fn status(&self) -> Result<String, String> {
        Ok(self.state()?["status"]
            .as_str()
            .unwrap_or_default()
            .to_string())
    }

    fn pid(&self) -> Result<i64, String> {
        let st = self.state()?;
        st["pid"]
            .as_i64()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("no pid in {st}"))
    }

    fn wait_status(&self, want: &str) -> Outcome {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let s = self.status()?;
            if s == want {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("status stayed {s}, never {want}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Create, start, and wait until the process exited.
    fn run_to_end(&self) -> Outcome {
        self.create()?;
        self.start()?;
        self.wait_status("stopped")
    }
}

impl Drop for Ctr<'_> {
    fn drop(&mut self) {
        let _ = self.env.rt(&["delete", "--force", &self.id]);
    }
}

fn pause() {
    std::thread::sleep(Duration::from_millis(150));
}

// ---- lifecycle and state ----

fn lifecycle(env: &Env, rows: &mut Rows) -> Outcome {
    let b = env.bundle("life")?;
    let cfg = b.write_with(
        &[
            "sh",
            "-c",
            "echo ran >> /out/ran; touch /twval-write && echo ok > /out/rootw; \
             while [ ! -e /out/stop ]; do sleep 0.05; done",
        ],
        |c| c["annotations"] = json!({"org.twval.check": "lifecycle"}),
    )?;
    let c = env.container(&b, "life");
    let pidfile = b.dir.join("container.pid");
    let r = c.create_with(&["--pid-file", &pidfile.to_string_lossy()])?;
    ensure!(r.ok, "create failed: {}", r.err.trim())?;
    let st = c.state()?;
    let pid = st["pid"].as_i64().unwrap_or(0);
    rows.put(
        "create.state-created",
        ensure!(
            st["status"] == "created" && pid > 0 && Path::new(&format!("/proc/{pid}")).exists(),
            "state after create: {st}"
        ),
    );
    rows.put(
        "state.fields",
        state_fields(&st, &c.id, &b.dir, &cfg["annotations"]),
    );
    let written = fs::read_to_string(&pidfile).unwrap_or_default();
    rows.put(
        "pidfile",
        ensure!(
            written.trim() == pid.to_string(),
            "pid file {written:?}, state pid {pid}"
        ),
    );
    pause();
    rows.put(
        "create.process-waits",
        ensure!(b.out("ran").is_empty(), "the process ran before start"),
    );
    let dup = c.create_with(&[])?;
    let st2 = c.state()?;
    rows.put(
        "create.duplicate-id-refused",
        ensure!(
            !dup.ok && st2["status"] == "created" && st2["pid"] == st["pid"],
            "second create ok={}; the first is now {st2}",
            dup.ok
        ),
    );
    let start = c.op("start")?;
    let ran = b.wait_out("ran");
    let running = c.status()?;
    rows.put(
        "start.runs-process",
        ensure!(
            start.ok && ran.is_ok() && running == "running",
            "start ok={} {}; /out/ran {ran:?}; status {running}",
            start.ok,
            start.err.trim()
        ),
    );
    rows.put("root.writable", b.wait_out("rootw").map(|_| ()));
    let cgroups = cgroup_dirs(pid)?;
    let again = c.op("start")?;
    let status = c.status()?;
    rows.put(
        "start.twice-refused",
        ensure!(
            !again.ok && status == "running",
            "second start ok={}, status {status}",
            again.ok
        ),
    );
    let del = c.op("delete")?;
    let status = c.status()?;
    rows.put(
        "delete.running-refused",
        ensure!(
            !del.ok && status == "running",
            "delete of a running container ok={}, status then {status}",
            del.ok
        ),
    );
    fs::write(b.out.join("stop"), "").map_err(|e| e.to_string())?;
    let stopped = c.wait_status("stopped");
    rows.put("state.stopped-after-exit", stopped.clone());
    stopped?;
    let before = c.state()?;
    let kill = c.kill("KILL")?;
    let after = c.state()?;
    rows.put(
        "kill.stopped-refused",
        ensure!(
            !kill.ok && before == after,
            "kill of a stopped container ok={}; state {before} then {after}",
            kill.ok
        ),
    );
    let again = c.op("start")?;
    pause();
    rows.put(
        "start.stopped-refused",
        ensure!(
            !again.ok && b.out("ran") == "ran\n",
            "start of a stopped container ok={}; /out/ran {:?}",
            again.ok,
            b.out("ran")
        ),
    );
    let del = c.op("delete")?;
    let gone = c.op("state")?;
    rows.put(
        "delete.stopped",
        ensure!(
            del.ok && !gone.ok,
            "delete ok={} {}; state afterwards ok={}",
            del.ok,
            del.err.trim(),
            gone.ok
        ),
    );
    let left: Vec<_> = cgroups.iter().filter(|d| d.exists()).collect();
    rows.put(
        "delete.removes-cgroups",
        ensure!(
            !cgroups.is_empty() && left.is_empty(),
            "cgroups {cgroups:?}, left after delete {left:?}"
        ),
    );
    Ok(())
}

/// The state JSON of runtime-spec: ociVersion, id, status, pid, bundle (absolute), and the
/// annotations config.json gave.
fn state_fields(st: &Value, id: &str, bundle: &Path, annotations: &Value) -> Outcome {
    let mut wrong = Vec::new();
    if st["ociVersion"].as_str().is_none_or(str::is_empty) {
        wrong.push("ociVersion");
    }
    if st["id"] != id {
        wrong.push("id");
    }
    if !st["status"].is_string() {
        wrong.push("status");
    }
    if !st["pid"].is_i64() {
        wrong.push("pid");
    }
    if st["bundle"].as_str().map(Path::new) != Some(bundle) {
        wrong.push("bundle");
    }
    if &st["annotations"] != annotations {
        wrong.push("annotations");
    }
    ensure!(wrong.is_empty(), "wrong {wrong:?} in {st}")
}

fn created_ops(env: &Env, rows: &mut Rows) -> Outcome {
    let b = env.bundle("created")?;
    b.write_with(&["sh", "-c", "echo ran > /out/ran"], |_| {})?;
    let c = env.container(&b, "cdel");
    c.create()?;
    let del = c.op("delete")?;
    let status = c.status();
    rows.put(
        "delete.created-refused",
        ensure!(
            !del.ok && status.as_deref() == Ok("created"),
            "delete of a created container ok={}; status then {status:?}",
            del.ok
        ),
    );
    let c2 = env.container(&b, "ckill");
    c2.create()?;
    let kill = c2.kill("KILL")?;
    let stopped = c2.wait_status("stopped");
    rows.put(
        "kill.created",
        ensure!(
            kill.ok && stopped.is_ok() && b.out("ran").is_empty(),
            "kill ok={} {}; {stopped:?}; /out/ran {:?}",
            kill.ok,
            kill.err.trim(),
            b.out("ran")
        ),
    );
    Ok(())
}

fn kill_signals(env: &Env, rows: &mut Rows) -> Outcome {
    let b = env.bundle("sig")?;
    b.write_with(
        &[
            "sh",
            "-c",
            "trap 'echo USR1 >> /out/sig' USR1; trap 'echo TERM >> /out/sig; exit 3' TERM; \
             echo ready > /out/ready; while :; do sleep 1 & wait $!; done",
        ],
        |_| {},
    )?;
    let c = env.container(&b, "sig");
    c.create()?;
    c.start()?;
    b.wait_out("ready")?;
    let usr1 = c.kill("USR1")?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while b.out("sig").is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let term = c.kill("TERM")?;
    let stopped = c.wait_status("stopped");
    rows.put(
        "kill.signal-delivered",
        ensure!(
            usr1.ok && term.ok && b.out("sig") == "USR1\nTERM\n" && stopped.is_ok(),
            "kill USR1 ok={}, TERM ok={}; trapped {:?}; {stopped:?}",
            usr1.ok,
            term.ok,
            b.out("sig")
        ),
    );
    Ok(())
}

fn unknown_ids(env: &Env, rows: &mut Rows) -> Outcome {
    let id = env.unique("none");
    for (check, args) in [
        ("unknown-id.state", vec!["state", &id]),
        ("unknown-id.start", vec!["start", &id]),
        ("unknown-id.kill", vec!["kill", &id, "KILL"]),
        ("unknown-id.delete", vec!["delete", &id]),
    ] {
        let r = env.rt(&args)?;
        rows.put(check, ensure!(!r.ok, "{args:?} succeeded: {}", r.out));
    }
    let b = env.bundle("noid")?;
    b.write_with(&["true"], |_| {})?;
    let r = env.rt(&["create", "--bundle", &b.dir.to_string_lossy()])?;
    rows.put(
        "create.no-id-refused",
        ensure!(!r.ok, "create without an id succeeded"),
    );
    Ok(())
}

fn config_props(env: &Env, rows: &mut Rows) -> Outcome {
    let b = env.bundle("props")?;
    b.write_with(&["sh", "-c", "echo ran > /out/ran"], |c| {
        c["twvalUnknownProperty"] = json!({"x": 1});
        c["annotations"] = json!({"org.twval.unknown-key": ""});
    })?;
    let c = env.container(&b, "props");
    let ran = c.run_to_end();
    rows.put(
        "config.unknown-ignored",
        ran.and_then(|()| ensure!(b.out("ran") == "ran\n", "the process did not run")),
    );
    let b2 = env.bundle("badver")?;
    b2.write_with(&["true"], |c| c["ociVersion"] = json!("invalid"))?;
    let c2 = env.container(&b2, "badver");
    let r = c2.create_with(&[])?;
    rows.put(
        "config.invalid-version-refused",
        ensure!(!r.ok, "ociVersion \"invalid\" was accepted"),
    );
    // runtime-tools' config_updates_without_affect: config.json changed after create does
    // not change the container.
    let b3 = env.bundle("snapshot")?;
    b3.write_with(&["sh", "-c", "echo first > /out/which"], |_| {})?;
    let c3 = env.container(&b3, "snapshot");
    c3.create()?;
    b3.write_with(&["sh", "-c", "echo second > /out/which"], |_| {})?;
    let ran = c3.start().and_then(|()| c3.wait_status("stopped"));
    rows.put(
        "create.config-snapshot",
        ran.and_then(|()| {
            ensure!(
                b3.out("which") == "first\n",
                "the process was {:?}",
                b3.out("which")
            )
        }),
    );
    for (check, tag, edit) in [
        (
            "process.capabilities-unknown-refused",
            "badcap",
            json!({"capabilities": {"bounding": ["CAP_KILL", "CAP_TWVAL_BOGUS"]}}),
        ),
        (
            "process.rlimits-unknown-refused",
            "badrlimit",
            json!({"rlimits": [{"type": "RLIMIT_TWVAL_BOGUS", "soft": 1, "hard": 1}]}),
        ),
    ] {
        let b = env.bundle(tag)?;
        b.write_with(&["true"], |c| {
            for (k, v) in edit.as_object().into_iter().flatten() {
                c["process"][k] = v.clone();
            }
        })?;
        let c = env.container(&b, tag);
        let r = c.create_with(&[])?;
        rows.put(check, ensure!(!r.ok, "{edit} was accepted"));
    }
    Ok(())
}

// ---- hooks ----

fn hooks(env: &Env, rows: &mut Rows) -> Outcome {
    let b = env.bundle("hooks")?;
    let o = b.out.display().to_string();
    let cfg = b.write_with(
        &[
            "sh",
            "-c",
            "[ -e /out/prestart.json ] && echo yes > /out/saw-prestart; i=0; \
             while [ ! -e /out/poststart.json ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done",
        ],
        |c| {
            let mut pre = b.hook(&[
                "sh",
                "-c",
                &format!("cat > {o}/prestart.json; echo \"$TWVAL_HOOK\" > {o}/prestart.env"),
            ]);
            pre["env"] = json!(["PATH=/bin", "TWVAL_HOOK=from-config"]);
            c["hooks"] = json!({
                "prestart": [pre],
                "poststart": [b.hook(&["sh", "-c", &format!("cat > {o}/poststart.json")])],
                "poststop": [b.hook(&["sh", "-c", &format!("cat > {o}/poststop.json")])],
            });
            c["annotations"] = json!({"org.twval.hooks": "stdin"});
        },
    )?;
    let c = env.container(&b, "hooks");
    c.create()?;
    let pid = c.pid()?;
    let start = c.op("start")?;
    let poststart_at_return = b.out("poststart.json");
    c.wait_status("stopped")?;
    let del = c.op("delete")?;
    let poststop_at_return = b.out("poststop.json");
    let stdin = |file: &str, status: Option<&str>, with_pid: bool| -> Outcome {
        let text = b.out(file);
        let st: Value = serde_json::from_str(&text).map_err(|e| format!("{file} {text:?}: {e}"))?;
        ensure!(
            st["id"] == c.id.as_str()
                && st["bundle"].as_str().map(Path::new) == Some(b.dir.as_path())
                && (!with_pid || st["pid"] == pid)
                && st["annotations"] == cfg["annotations"]
                && match status {
                    Some(s) => st["status"] == s,
                    None => st["status"].as_str().is_some_and(|s| !s.is_empty()),
                },
            "state on stdin {st}"
        )
    };
    rows.put(
        "hooks.prestart",
        // The state while create runs them: runc says "creating" (twill-oci too).
        stdin("prestart.json", Some("creating"), true).and_then(|()| {
            ensure!(
                b.out("saw-prestart") == "yes\n",
                "prestart had not run when the process started"
            )
        }),
    );
    rows.put(
        "hooks.poststart",
        ensure!(start.ok, "start failed: {}", start.err.trim())
            .and_then(|()| {
                ensure!(
                    !poststart_at_return.is_empty(),
                    "poststart had not run when start returned"
                )
            })
            .and_then(|()| stdin("poststart.json", Some("running"), true)),
    );
    rows.put(
        "hooks.poststop",
        ensure!(del.ok, "delete failed: {}", del.err.trim())
            .and_then(|()| {
                ensure!(
                    !poststop_at_return.is_empty(),
                    "poststop had not run when delete returned"
                )
            })
            .and_then(|()| stdin("poststop.json", None, false)),
    );
    rows.put(
        "hooks.env",
        ensure!(
            b.out("prestart.env") == "from-config\n",
            "hook env {:?}",
            b.out("prestart.env")
        ),
    );
    Ok(())
}

fn hook_prestart_fail(env: &Env, rows: &mut Rows) -> Outcome {
    let b = env.bundle("prefail")?;
    let o = b.out.display().to_string();
    b.write_with(&["touch", "/out/ran"], |c| {
        c["hooks"] = json!({"prestart": [
            b.hook(&["sh", "-c", &format!("echo ran > {o}/hook; exit 1")]),
        ]});
    })?;
    let c = env.container(&b, "prefail");
    let create = c.create_with(&[])?;
    let start = if create.ok {
        Some(c.op("start")?)
    } else {
        None
    };
    pause();
    let state = c.op("state")?;
    rows.put(
        "hooks.prestart-fail-stops",
        ensure!(
            (!create.ok || start.as_ref().is_some_and(|s| !s.ok))
                && b.out("hook") == "ran\n"
                && !b.out.join("ran").exists()
                && !state.ok,
            "hook ran={:?}, create ok={}, start ok={:?}, process ran={}, state afterwards {}",
            b.out("hook"),
            create.ok,
            start.map(|s| s.ok),
            b.out.join("ran").exists(),
            state.out.trim()
        ),
    );
    Ok(())
}

fn hook_poststart_fail(env: &Env, rows: &mut Rows) -> Outcome {
    let b = env.bundle("postfail")?;
    let o = b.out.display().to_string();
    b.write_with(&["true"], |c| {
        c["hooks"] = json!({"poststart": [
            b.hook(&["false"]),
            b.hook(&["sh", "-c", &format!("echo called >> {o}/second")]),
        ]});
    })?;
    let c = env.container(&b, "postfail");
    c.create()?;
    let start = c.op("start")?;
    rows.put(
        "hooks.poststart-fail-continues",
        ensure!(
            start.ok && b.out("second") == "called\n",
            "start ok={} {}; second hook {:?}",
            start.ok,
            start.err.trim(),
            b.out("second")
        ),
    );
    Ok(())
}

fn hook_poststop_fail(env: &Env, rows: &mut Rows) -> Outcome {
    let b = env.bundle("stopfail")?;
    let o = b.out.display().to_string();
    b.write_with(&["true"], |c| {
        c["hooks"] = json!({"poststop": [
            b.hook(&["false"]),
            b.hook(&["sh", "-c", &format!("echo called >> {o}/second")]),
        ]});
    })?;
    let c = env.container(&b, "stopfail");
    c.run_to_end()?;
    let del = c.op("delete")?;
    let state = c.op("state")?;
    rows.put(
        "hooks.poststop-fail-continues",
        ensure!(
            del.ok && !state.ok && b.out("second") == "called\n",
            "delete ok={} {}; state afterwards ok={}; second hook {:?}",
            del.ok,
            del.err.trim(),
            state.ok,
            b.out("second")
        ),
    );
    Ok(())
}

fn hook_timeout(env: &Env, rows: &mut Rows) -> Outcome {
    let b = env.bundle("hooktime")?;
    let o = b.out.display().to_string();
    b.write_with(&["touch", "/out/ran"], |c| {
        let mut h = b.hook(&["sh", "-c", &format!("echo ran > {o}/hook; exec sleep 5")]);
        h["timeout"] = json!(1);
        c["hooks"] = json!({"prestart": [h]});
    })?;
    let c = env.container(&b, "hooktime");
    let t0 = Instant::now();
    let create = c.create_with(&[])?;
    let start = if create.ok {
        Some(c.op("start")?)
    } else {
        None
    };
    let took = t0.elapsed();
    rows.put(
        "hooks.timeout",
        ensure!(
            (!create.ok || start.as_ref().is_some_and(|s| !s.ok))
                && took < Duration::from_secs(4)
                && b.out("hook") == "ran\n"
                && !b.out.join("ran").exists(),
            "hook ran={:?}, create ok={}, start ok={:?} after {took:?}; process ran={}",
            b.out("hook"),
            create.ok,
            start.map(|s| s.ok),
            b.out.join("ran").exists()
        ),
    );
    Ok(())
}

// ---- process ----

const CAPS: &[(&str, u32)] = &[
    ("CAP_CHOWN", 0),
    ("CAP_DAC_OVERRIDE", 1),
    ("CAP_KILL", 5),
    ("CAP_SETGID", 6),
    ("CAP_SETUID", 7),
    ("CAP_NET_BIND_SERVICE", 10),
    ("CAP_MKNOD", 27),
    ("CAP_AUDIT_WRITE", 29),
];

fn cap_mask(names: &[&str]) -> u64 {
    names
        .iter()
        .map(|n| {
            let bit = CAPS
                .iter()
                .find(|(c, _)| c == n)
                .expect("a known capability")
                .1;
            1u64 << bit
        })
        .fold(0, |a, b| a | b)
}

/// The value of `key:` in a /proc/PID/status text.
fn status_field<'a>(status: &'a str, key: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .map(str::trim)
        .unwrap_or("")
}

/// Compares the capability sets in a /proc/PID/status text with the named capabilities.
fn cap_sets(status: &str, sets: [(&str, &[&str]); 5]) -> Outcome {
    let mut wrong = Vec::new();
    for (key, names) in sets {
        let got = u64::from_str_radix(status_field(status, key), 16).ok();
        if got != Some(cap_mask(names)) {
            wrong.push(format!("{key} {got:x?}, want {:x}", cap_mask(names)));
        }
    }
    ensure!(wrong.is_empty(), "{}", wrong.join("; "))
}

fn process_non_root(env: &Env, rows: &mut Rows) -> Outcome {
    let b = env.bundle("proc")?;
    let script = "cat /proc/$$/status > /out/status; cat /proc/$$/limits > /out/limits; \
                  cat /proc/$$/cmdline > /out/cmdline; cat /proc/$$/environ > /out/environ; \
                  cat /proc/$$/oom_score_adj > /out/oom; pwd > /out/cwd; umask > /out/umask";
    let args = ["sh", "-c", script, "argzero", "two words"];
    let env_list = [
        "PATH=/bin",
        "TWVAL_SPACES=one two",
        "TWVAL_EMPTY=",
        "TWVAL_EQ=a=b",
    ];
    fs::create_dir_all(b.rootfs.join("home/twval")).map_err(|e| e.to_string())?;
    let bounding = [
        "CAP_CHOWN",
        "CAP_KILL",
        "CAP_NET_BIND_SERVICE",
        "CAP_SETUID",
    ];
    let raised = ["CAP_KILL", "CAP_NET_BIND_SERVICE"];
    let ambient = ["CAP_NET_BIND_SERVICE"];
    b.write_with(&args, |c| {
        c["process"]["user"] = json!({"uid": 1000, "gid": 1000, "additionalGids": [5, 1001],
                                      "umask": 0o027});
        c["process"]["env"] = json!(env_list);
        c["process"]["cwd"] = json!("/home/twval");
        c["process"]["rlimits"] = json!([
            {"type": "RLIMIT_NOFILE", "soft": 512, "hard": 1024},
            {"type": "RLIMIT_CORE", "soft": 4096, "hard": 8192}
        ]);
        c["process"]["noNewPrivileges"] = json!(true);
        c["process"]["oomScoreAdj"] = json!(300);
        c["process"]["capabilities"] = json!({
            "bounding": bounding, "effective": raised, "permitted": raised,
            "inheritable": raised, "ambient": ambient
        });
    })?;
    let c = env.container(&b, "proc");
    c.run_to_end()?;
    let status = b.wait_out("status")?;
    let want_cmdline: String = args.iter().map(|a| format!("{a}\0")).collect();
    rows.put(
        "process.args",
        ensure!(
            b.out("cmdline") == want_cmdline,
            "cmdline {:?}",
            b.out("cmdline")
        ),
    );
    let environ = b.out("environ");
    let have: BTreeSet<&str> = environ.split('\0').collect();
    let missing: Vec<_> = env_list.iter().filter(|e| !have.contains(*e)).collect();
    rows.put(
        "process.env",
        ensure!(missing.is_empty(), "missing {missing:?} in {environ:?}"),
    );
    rows.put(
        "process.cwd",
        ensure!(b.out("cwd") == "/home/twval\n", "cwd {:?}", b.out("cwd")),
    );
    let (uid, gid) = (status_field(&status, "Uid"), status_field(&status, "Gid"));
    rows.put(
        "process.user",
        ensure!(
            uid.split_whitespace().all(|u| u == "1000")
                && gid.split_whitespace().all(|g| g == "1000"),
            "Uid {uid:?}, Gid {gid:?}"
        ),
    );
    let groups: BTreeSet<&str> = status_field(&status, "Groups").split_whitespace().collect();
    rows.put(
        "process.additional-gids",
        ensure!(
            groups.contains("5") && groups.contains("1001"),
            "Groups {groups:?}"
        ),
    );
    rows.put(
        "process.umask",
        ensure!(b.out("umask") == "0027\n", "umask {:?}", b.out("umask")),
    );
    let limits = b.out("limits");
    let limit = |name: &str| -> Option<(String, String)> {
        let rest = limits.lines().find_map(|l| l.strip_prefix(name))?;
        let mut w = rest.split_whitespace();
        Some((w.next()?.to_string(), w.next()?.to_string()))
    };
    let (nofile, core) = (limit("Max open files"), limit("Max core file size"));
    rows.put(
        "process.rlimits",
        ensure!(
            nofile == Some(("512".into(), "1024".into()))
                && core == Some(("4096".into(), "8192".into())),
            "open files {nofile:?}, core {core:?}"
        ),
    );
    rows.put(
        "process.no-new-privileges",
        ensure!(
            status_field(&status, "NoNewPrivs") == "1",
            "NoNewPrivs {:?}",
            status_field(&status, "NoNewPrivs")
        ),
    );
    // The sets after the runtime's execve: a non-root process keeps only its ambient
    // capabilities permitted and effective.
    rows.put(
        "process.capabilities",
        cap_sets(
            &status,
            [
                ("CapBnd", &bounding[..]),
                ("CapInh", &raised[..]),
                ("CapAmb", &ambient[..]),
                ("CapPrm", &ambient[..]),
                ("CapEff", &ambient[..]),
            ],
        ),
    );
    rows.put(
        "process.oom-score-adj",
        ensure!(b.out("oom") == "300\n", "oom_score_adj {:?}", b.out("oom")),
    );
    Ok(())
}

// ---- filesystem ----

/// One line of /proc/PID/mountinfo.
#[derive(Debug, Clone)]
struct MountLine {
    id: String,
    parent: String,
    point: String,
    options: String,
    optional: String,
    fstype: String,
    source: String,
    super_options: String,
}

fn mountinfo(text: &str) -> Vec<MountLine> {
    text.lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let f: Vec<&str> = left.split(' ').collect();
            let r: Vec<&str> = right.split(' ').collect();
            Some(MountLine {
                id: f.first()?.to_string(),
                parent: f.get(1)?.to_string(),
                point: f.get(4)?.to_string(),
                options: f.get(5)?.to_string(),
                optional: f.get(6..).map(|o| o.join(" ")).unwrap_or_default(),
                fstype: r.first()?.to_string(),
                source: r.get(1)?.to_string(),
                super_options: r.get(2).map(|s| s.to_string()).unwrap_or_default(),
            })
        })
        .collect()
}

fn has_option(options: &str, want: &str) -> bool {
    options.split(',').any(|o| o == want)
}

fn filesystem_basics(env: &Env, rows: &mut Rows) -> Outcome {
    let b = env.bundle("fs")?;
    let script = "cat /proc/$$/mountinfo > /out/mountinfo; cat /proc/$$/status > /out/status; \
        hostname > /out/hostname; cat /proc/sys/kernel/domainname > /out/domainname; \
        stat -c '%n %F %t %T %a %u %g' /dev/null /dev/zero /dev/full /dev/random /dev/urandom \
          /dev/tty > /out/devices 2>&1; \
        stat -L -c '%n %F %t %T' /dev/ptmx > /out/ptmx 2>&1; \
        for l in /dev/fd /dev/stdin /dev/stdout /dev/stderr; do echo \"$l $(readlink $l)\"; done \
          > /out/links; \
        for f in /proc/kcore /proc/keys /maskfile; do \
          if [ ! -e $f ]; then echo \"$f absent\"; \
          elif head -c 1 $f > /tmp/m 2>/dev/null; then echo \"$f $(wc -c < /tmp/m)\"; \
          else echo \"$f unreadable\"; fi; done > /out/masked; \
        for d in /sys/firmware /maskdir; do echo \"$d $(ls -A $d | wc -l)\"; done >> /out/masked; \
        if touch /rodir/x 2>/dev/null; then echo writable; else echo readonly; fi > /out/rodir; \
        echo done > /out/done";
    b.write_with(&["sh", "-c", script], |c| {
        c["hostname"] = json!("twval-host");
        c["domainname"] = json!("twval.example");
        c["process"]["noNewPrivileges"] = json!(false);
        c["linux"]["maskedPaths"] = json!([
            "/proc/kcore",
            "/proc/keys",
            "/sys/firmware",
            "/maskfile",
            "/maskdir",
            "/twval-not-there"
        ]);
        c["linux"]["readonlyPaths"] = json!([
            "/proc/sys",
            "/proc/sysrq-trigger",
            "/rodir",
            "/twval-not-there-either"
        ]);
    })?;
    let c = env.container(&b, "fs");
    c.run_to_end()?;
    b.wait_out("done")?;
    rows.put(
        "hostname",
        ensure!(
            b.out("hostname") == "twval-host\n",
            "hostname {:?}",
            b.out("hostname")
        ),
    );
    rows.put(
        "domainname",
        ensure!(
            b.out("domainname") == "twval.example\n",
            "domainname {:?}",
            b.out("domainname")
        ),
    );
    let mounts = mountinfo(&b.out("mountinfo"));
    let fstype_at = |p: &str| {
        mounts
            .iter()
            .rev()
            .find(|m| m.point == p)
            .map(|m| m.fstype.clone())
    };
    let wrong_fs: Vec<_> = [
        ("/proc", "proc"),
        ("/sys", "sysfs"),
        ("/dev/pts", "devpts"),
        ("/dev/shm", "tmpfs"),
    ]
    .into_iter()
    .filter(|(p, t)| fstype_at(p).as_deref() != Some(*t))
    .map(|(p, _)| (p, fstype_at(p)))
    .collect();
    rows.put(
        "default-fs",
        ensure!(wrong_fs.is_empty(), "wrong or missing: {wrong_fs:?}"),
    );
    let want_devices = "/dev/null character special file 1 3 666 0 0\n\
        /dev/zero character special file 1 5 666 0 0\n\
        /dev/full character special file 1 7 666 0 0\n\
        /dev/random character special file 1 8 666 0 0\n\
        /dev/urandom character special file 1 9 666 0 0\n\
        /dev/tty character special file 5 0 666 0 0\n";
    rows.put(
        "default-devices",
        ensure!(
            b.out("devices") == want_devices
                && b.out("ptmx") == "/dev/ptmx character special file 5 2\n",
            "devices:\n{}ptmx: {}",
            b.out("devices"),
            b.out("ptmx")
        ),
    );
    rows.put(
        "default-symlinks",
        ensure!(
            b.out("links")
                == "/dev/fd /proc/self/fd\n/dev/stdin /proc/self/fd/0\n\
                    /dev/stdout /proc/self/fd/1\n/dev/stderr /proc/self/fd/2\n",
            "links:\n{}",
            b.out("links")
        ),
    );
    // Some kernels have no /proc/kcore (or /proc/sysrq-trigger): nothing to mask there.
    let on_host = |p: &str| if Path::new(p).exists() { "0" } else { "absent" };
    let want_masked = format!(
        "/proc/kcore {}\n/proc/keys {}\n/maskfile 0\n/sys/firmware 0\n/maskdir 0\n",
        on_host("/proc/kcore"),
        on_host("/proc/keys")
    );
    rows.put(
        "masked-paths",
        ensure!(
            b.out("masked") == want_masked,
            "masked (path, bytes or entries):\n{}",
            b.out("masked")
        ),
    );
    let not_ro: Vec<_> = ["/proc/sys", "/proc/sysrq-trigger", "/rodir"]
        .into_iter()
        .filter(|p| !p.starts_with("/proc/") || Path::new(p).exists())
        .filter(|p| {
            !mounts
                .iter()
                .rev()
                .find(|m| m.point == *p)
                .is_some_and(|m| has_option(&m.options, "ro"))
        })
        .collect();
    rows.put(
        "readonly-paths",
        ensure!(
            not_ro.is_empty() && b.out("rodir") == "readonly\n",
            "not read-only mounts: {not_ro:?}; /rodir {:?}",
            b.out("rodir")
        ),
    );
    let status = b.out("status");
    let base = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"];
    rows.put(
        "process.capabilities-root",
        cap_sets(
            &status,
            [
                ("CapBnd", &base[..]),
                ("CapEff", &base[..]),
                ("CapPrm", &base[..]),
                ("CapInh", &[]),
                ("CapAmb", &[]),
            ],
        ),
    );
    let nnp = status_field(&status, "NoNewPrivs").to_string();
    rows.put(
        "process.no-new-privileges-false",
        ensure!(nnp == "0", "NoNewPrivs {nnp:?}"),
    );
    Ok(())
}

fn mounts(env: &Env, rows: &mut Rows) -> Outcome {
    let b = env.bundle("mounts")?;
    let src = b.dir.join("bindsrc");
    fs::create_dir_all(&src).map_err(|e| e.to_string())?;
    fs::write(src.join("marker"), "marker\n").map_err(|e| e.to_string())?;
    let script = "cat /proc/$$/mountinfo > /out/mountinfo; cat /mnt/ro/marker > /out/marker; \
        if touch /twval-write 2>/dev/null; then echo writable; else echo readonly; fi > /out/rootw; \
        echo done > /out/done";
    let cfg = b.write_with(&["sh", "-c", script], |c| {
        c["root"]["readonly"] = json!(true);
        let m = c["mounts"].as_array_mut().expect("mounts");
        m.push(
            json!({"destination": "/mnt/ro", "type": "bind", "source": src,
                      "options": ["rbind", "ro", "nosuid", "nodev", "noexec"]}),
        );
        m.push(
            json!({"destination": "/mnt/t", "type": "tmpfs", "source": "twval-t",
                      "options": ["nosuid", "size=1m", "mode=700"]}),
        );
        m.push(
            json!({"destination": "/mnt/t/inner", "type": "tmpfs", "source": "twval-inner",
                      "options": ["nodev"]}),
        );
    })?;
    let c = env.container(&b, "mounts");
    c.run_to_end()?;
    b.wait_out("done")?;
    let mounts = mountinfo(&b.out("mountinfo"));
    rows.put(
        "root.readonly",
        ensure!(b.out("rootw") == "readonly\n", "root {:?}", b.out("rootw")),
    );
    // runtime-tools' order check: the non-bind mounts of config.json, matched by destination,
    // type and source, appear in mountinfo in the same order.
    let mut from = 0;
    let mut order = Ok(());
    for m in cfg["mounts"].as_array().into_iter().flatten() {
        if m["type"] == "bind" {
            continue;
        }
        let (dest, typ, source) = (
            m["destination"].as_str().unwrap_or(""),
            m["type"].as_str().unwrap_or(""),
            m["source"].as_str().unwrap_or(""),
        );
        match mounts[from..]
            .iter()
            .position(|l| l.point == dest && l.fstype == typ && l.source == source)
        {
            Some(i) => from += i + 1,
            None => {
                order = Err(format!(
                    "{dest} ({typ} from {source}) is missing or out of order in:\n{}",
                    b.out("mountinfo")
                ));
                break;
            }
        }
    }
    rows.put("mounts.in-order", order);
    let at = |p: &str| mounts.iter().rev().find(|m| m.point == p).cloned();
    let ro = at("/mnt/ro");
    rows.put(
        "mounts.bind-options",
        ensure!(
            ro.as_ref()
                .is_some_and(|m| ["ro", "nosuid", "nodev", "noexec"]
                    .iter()
                    .all(|o| has_option(&m.options, o)))
                && b.out("marker") == "marker\n",
            "/mnt/ro {ro:?}, marker {:?}",
            b.out("marker")
        ),
    );
    let t = at("/mnt/t");
    rows.put(
        "mounts.tmpfs-options",
        ensure!(
            t.as_ref().is_some_and(|m| has_option(&m.options, "nosuid")
                && has_option(&m.super_options, "size=1024k")
                && has_option(&m.super_options, "mode=700")),
            "/mnt/t {t:?}"
        ),
    );
    let inner = at("/mnt/t/inner");
    rows.put(
        "mounts.nested",
        ensure!(
            matches!((&t, &inner), (Some(t), Some(i)) if i.parent == t.id),
            "/mnt/t {t:?}, /mnt/t/inner {inner:?}"
        ),
    );
    Ok(())
}

fn device_probe(env: &Env, tag: &str, device: Value, path: &str) -> Result<String, String> {
    let b = env.bundle(tag)?;
    let script = format!("stat -c '%n %F %t %T %a %u %g' {path} > /out/dev 2>&1");
    b.write_with(&["sh", "-c", &script], |c| {
        c["linux"]["devices"] = json!([device]);
    })?;
    let c = env.container(&b, tag);
    c.run_to_end()?;
    b.wait_out("dev")
}

fn device_char(env: &Env, rows: &mut Rows) -> Outcome {
    let got = device_probe(
        env,
        "devc",
        // 0666, as /dev/fuse or /dev/net/tun: the runtime's umask must not take bits off.
        json!({"path": "/dev/twval-null", "type": "c", "major": 1, "minor": 3,
               "fileMode": 0o666, "uid": 0, "gid": 5}),
        "/dev/twval-null",
    )?;
    rows.put(
        "linux.devices.char",
        ensure!(
            got == "/dev/twval-null character special file 1 3 666 0 5\n",
            "{got:?}"
        ),
    );
    Ok(())
}

fn device_fifo(env: &Env, rows: &mut Rows) -> Outcome {
    let got = device_probe(
        env,
        "devp",
        json!({"path": "/dev/twval-fifo", "type": "p", "fileMode": 0o600, "uid": 0, "gid": 0}),
        "/dev/twval-fifo",
    )?;
    rows.put(
        "linux.devices.fifo",
        ensure!(got == "/dev/twval-fifo fifo 0 0 600 0 0\n", "{got:?}"),
    );
    Ok(())
}

fn sysctl(env: &Env, rows: &mut Rows) -> Outcome {
    let b = env.bundle("sysctl")?;
    b.write_with(
        &[
            "sh",
            "-c",
            "cat /proc/sys/net/ipv4/ip_forward /proc/sys/kernel/msgmax > /out/sysctl",
        ],
        |c| c["linux"]["sysctl"] = json!({"net.ipv4.ip_forward": "1", "kernel.msgmax": "4096"}),
    )?;
    let c = env.container(&b, "sysctl");
    c.run_to_end()?;
    let got = b.wait_out("sysctl")?;
    rows.put("sysctl", ensure!(got == "1\n4096\n", "{got:?}"));
    Ok(())
}

// ---- namespaces ----

/// A namespace's identity (nsfs device and inode); works for /proc/PID/ns links and for
/// the bind mounts under /var/run/netns alike.
fn ns_id(path: &str) -> String {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(path)
        .map(|m| format!("{}:{}", m.dev(), m.ino()))
        .unwrap_or_else(|e| format!("{path} unreadable: {e}"))
}

fn ns_link(pid: &str, ns: &str) -> String {
    ns_id(&format!("/proc/{pid}/ns/{ns}"))
}

fn namespaces_new(env: &Env, rows: &mut Rows) -> Outcome {
    let b = env.bundle("nsnew")?;
    b.write_with(&["sleep", "100"], |c| {
        c["linux"]["namespaces"] = json!([{"type": "pid"}, {"type": "network"}, {"type": "ipc"},
            {"type": "uts"}, {"type": "mount"}, {"type": "cgroup"}]);
    })?;
    let c = env.container(&b, "nsnew");
    c.create()?;
    let pid = c.pid()?.to_string();
    let shared: Vec<_> = ["pid", "net", "ipc", "uts", "mnt", "cgroup"]
        .into_iter()
        .filter(|ns| ns_link(&pid, ns) == ns_link("self", ns))
        .collect();
    rows.put(
        "namespaces.new",
        ensure!(shared.is_empty(), "still the runtime's: {shared:?}"),
    );
    let b2 = env.bundle("nsinherit")?;
    b2.write_with(&["sleep", "100"], |c| {
        c["linux"]["namespaces"] = json!([{"type": "pid"}, {"type": "network"}, {"type": "mount"}]);
        if let Some(o) = c.as_object_mut() {
            o.remove("hostname");
        }
    })?;
    let c2 = env.container(&b2, "nsinherit");
    c2.create()?;
    let pid2 = c2.pid()?.to_string();
    let new: Vec<_> = ["ipc", "uts", "cgroup", "user"]
        .into_iter()
        .filter(|ns| ns_link(&pid2, ns) != ns_link("self", ns))
        .collect();
    rows.put(
        "namespaces.inherited",
        ensure!(new.is_empty(), "not inherited: {new:?}"),
    );
    Ok(())
}

/// A process in its own ipc, uts, mount and pid namespaces, to join by path; killed on drop.
struct Unshared(Child);

impl Unshared {
    fn start() -> Result<Unshared, String> {
        let child = Command::new("unshare")
            .args([
                "--ipc",
                "--uts",
                "--mount",
                "--pid",
                "--fork",
                "--kill-child",
                "sleep",
                "1000",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("unshare: {e}"))?;
        let u = Unshared(child);
        let pid = u.0.id().to_string();
        let deadline = Instant::now() + Duration::from_secs(5);
        while ns_link(&pid, "pid_for_children") == ns_link("self", "pid")
            || ns_link(&pid, "uts") == ns_link("self", "uts")
        {
            if Instant::now() > deadline {
                return Err("unshare never made its namespaces".into());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(u)
    }
}

impl Unshared {
    fn alive(&mut self) -> bool {
        matches!(self.0.try_wait(), Ok(None))
    }
}

impl Drop for Unshared {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A named network namespace (`ip netns add`), deleted on drop.
struct NetnsGuard(String);

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn namespaces_by_path(env: &Env, rows: &mut Rows) -> Outcome {
    let name = format!("twval-{}-{}", env.label, std::process::id());
    let added = Command::new("ip")
        .args(["netns", "add", &name])
        .status()
        .map_err(|e| format!("ip netns add: {e}"))?;
    ensure!(added.success(), "ip netns add {name} failed")?;
    let _netns = NetnsGuard(name.clone());
    let mut u = Unshared::start()?;
    let upid = u.0.id().to_string();
    let cases = [
        (
            "namespaces.path-net",
            "network",
            "net",
            format!("/var/run/netns/{name}"),
        ),
        (
            "namespaces.path-ipc",
            "ipc",
            "ipc",
            format!("/proc/{upid}/ns/ipc"),
        ),
        (
            "namespaces.path-uts",
            "uts",
            "uts",
            format!("/proc/{upid}/ns/uts"),
        ),
        (
            "namespaces.path-pid",
            "pid",
            "pid",
            format!("/proc/{upid}/ns/pid_for_children"),
        ),
        (
            "namespaces.path-mnt",
            "mount",
            "mnt",
            format!("/proc/{upid}/ns/mnt"),
        ),
    ];
    for (check, typ, proc_name, path) in cases {
        let want = ns_id(&path);
        let b = env.bundle(proc_name)?;
        b.write_with(&["sleep", "100"], |c| {
            for ns in c["linux"]["namespaces"].as_array_mut().expect("namespaces") {
                if ns["type"] == typ {
                    ns["path"] = json!(path);
                }
            }
        })?;
        let c = env.container(&b, proc_name);
        let outcome = c.create().and_then(|()| {
            let got = ns_link(&c.pid()?.to_string(), proc_name);
            ensure!(got == want, "joined {got}, want {want} ({path})")
        });
        rows.put(check, outcome);
    }
    // runtime-tools' linux_ns_path_type: a path to a namespace of another type is an error.
    let netns_path = format!("/var/run/netns/{name}");
    let b = env.bundle("nswrong")?;
    b.write_with(&["true"], |c| {
        for ns in c["linux"]["namespaces"].as_array_mut().expect("namespaces") {
            if ns["type"] == "ipc" {
                ns["path"] = json!(netns_path);
            }
        }
    })?;
    let c = env.container(&b, "nswrong");
    let r = c.create_with(&[])?;
    rows.put(
        "namespaces.path-wrong-type-refused",
        ensure!(!r.ok, "an ipc namespace given as {netns_path} was accepted"),
    );
    // runtime-tools' delete_only_create_resources: the joined namespaces outlive the
    // containers (all deleted by now).
    drop(c);
    let kept: Vec<String> = [
        (netns_path.clone(), ns_id(&netns_path)),
        (format!("/proc/{upid}/ns/uts"), ns_link(&upid, "uts")),
    ]
    .into_iter()
    .filter(|(p, _)| !Path::new(p).exists())
    .map(|(p, _)| p)
    .collect();
    rows.put(
        "delete.keeps-joined-namespaces",
        ensure!(
            kept.is_empty() && u.alive(),
            "gone after delete: {kept:?}; the namespaces' process alive={}",
            u.alive()
        ),
    );
    Ok(())
}

fn user_mappings(env: &Env, rows: &mut Rows) -> Outcome {
    let b = env.bundle("userns")?;
    b.write_with(
        &[
            "sh",
            "-c",
            "cat /proc/$$/uid_map /proc/$$/gid_map > /out/maps",
        ],
        |c| {
            let ns = c["linux"]["namespaces"].as_array_mut().expect("namespaces");
            ns.push(json!({"type": "user"}));
            let map = json!([{"containerID": 0, "hostID": 200000, "size": 65536}]);
            c["linux"]["uidMappings"] = map.clone();
            c["linux"]["gidMappings"] = map;
        },
    )?;
    let c = env.container(&b, "userns");
    c.run_to_end()?;
    let maps = b.wait_out("maps")?;
    let lines: Vec<Vec<&str>> = maps
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    rows.put(
        "namespaces.user-mappings",
        ensure!(
            lines == [["0", "200000", "65536"], ["0", "200000", "65536"]],
            "uid_map and gid_map {maps:?}"
        ),
    );
    Ok(())
}

fn seccomp(env: &Env, rows: &mut Rows) -> Outcome {
    let b = env.bundle("seccomp")?;
    b.write_with(
        &[
            "sh",
            "-c",
            "mkdir /tmp/x 2> /out/mkdir; grep Seccomp: /proc/$$/status > /out/seccomp",
        ],
        |c| {
            c["linux"]["seccomp"] = json!({
                "defaultAction": "SCMP_ACT_ALLOW",
                "architectures": ["SCMP_ARCH_X86_64"],
                "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO",
                              "errnoRet": 1}]
            });
        },
    )?;
    let c = env.container(&b, "seccomp");
    c.run_to_end()?;
    let status = b.wait_out("seccomp")?;
    rows.put(
        "seccomp.errno",
        ensure!(
            b.out("mkdir").contains("Operation not permitted") && status == "Seccomp:\t2\n",
            "mkdir {:?}, {status:?}",
            b.out("mkdir")
        ),
    );
    Ok(())
}

fn rootfs_propagation(env: &Env, rows: &mut Rows) -> Outcome {
    for (check, mode) in [
        ("rootfs-propagation.shared", "shared"),
        ("rootfs-propagation.slave", "slave"),
        ("rootfs-propagation.private", "private"),
        ("rootfs-propagation.unbindable", "unbindable"),
    ] {
        let b = env.bundle(mode)?;
        b.write_with(
            &["sh", "-c", "cat /proc/$$/mountinfo > /out/mountinfo"],
            |c| {
                c["linux"]["rootfsPropagation"] = json!(mode);
            },
        )?;
        let c = env.container(&b, mode);
        let outcome = c.run_to_end().and_then(|()| {
            let mounts = mountinfo(&b.wait_out("mountinfo")?);
            let root = mounts
                .iter()
                .rev()
                .find(|m| m.point == "/")
                .ok_or("no / in mountinfo")?;
            let o = &root.optional;
            let ok = match mode {
                "shared" => o.contains("shared:"),
                // runtime-tools' test: a mount under / does not propagate back out. A
                // slave of a private host root has no master.
                "slave" => !o.contains("shared:"),
                "private" => !o.contains("shared:") && !o.contains("master:"),
                _ => o.contains("unbindable"),
            };
            ensure!(ok, "/ has propagation {o:?}")
        });
        rows.put(check, outcome);
    }
    Ok(())
}

// ---- cgroups ----

/// The container's own cgroup directories (one per hierarchy), from /proc/PID/cgroup, where
/// they differ from the test's own.
fn cgroup_dirs(pid: i64) -> Result<Vec<PathBuf>, String> {
    let read = |p: &str| fs::read_to_string(p).map_err(|e| format!("{p}: {e}"));
    let mine = read("/proc/self/cgroup")?;
    let theirs = read(&format!("/proc/{pid}/cgroup"))?;
    Ok(theirs
        .lines()
        .filter(|l| !mine.lines().any(|m| m == *l))
        .filter_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
            Some(cgroup_dir(controllers, path))
        })
        .collect())
}

fn cgroup_dir(controllers: &str, path: &str) -> PathBuf {
    let root = Path::new("/sys/fs/cgroup");
    let rel = path.trim_start_matches('/');
    match controllers {
        "" if root.join("unified").exists() => root.join("unified").join(rel),
        "" => root.join(rel),
        c => root.join(c.trim_start_matches("name=")).join(rel),
    }
}

/// The directory of `controller` for process `pid`, and whether it is cgroup v2.
fn controller_dir(pid: i64, controller: &str) -> Result<(PathBuf, bool), String> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).map_err(|e| e.to_string())?;
    for l in text.lines() {
        let mut f = l.splitn(3, ':');
        let (_, controllers, path) = (f.next(), f.next().unwrap_or(""), f.next().unwrap_or(""));
        if controllers.split(',').any(|c| c == controller) {
            return Ok((cgroup_dir(controllers, path), false));
        }
    }
    let v2 = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .ok_or_else(|| format!("no {controller} cgroup in {text:?}"))?;
    Ok((
        Path::new("/sys/fs/cgroup").join(v2.trim_start_matches('/')),
        true,
    ))
}

fn read_values(dir: &Path, files: &[&str]) -> Vec<String> {
    files
        .iter()
        .map(|f| {
            fs::read_to_string(dir.join(f))
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|e| format!("{f}: {e}"))
        })
        .collect()
}

/// Removes cgroup directories a runtime left under our unique cgroupsPath.
struct CgroupSweep(String);

impl Drop for CgroupSweep {
    fn drop(&mut self) {
        let rel = self.0.trim_start_matches('/');
        if let Ok(entries) = fs::read_dir("/sys/fs/cgroup") {
            for e in entries.flatten() {
                let _ = fs::remove_dir(e.path().join(rel));
            }
        }
        let _ = fs::remove_dir(Path::new("/sys/fs/cgroup").join(rel));
    }
}

fn cgroups(env: &Env, rows: &mut Rows) -> Outcome {
    let b = env.bundle("cgroups")?;
    let path = format!("/{}", env.unique("cg"));
    let _sweep = CgroupSweep(path.clone());
    b.write_with(
        &[
            "sh",
            "-c",
            "mknod /tmp/twval-mem c 1 1 && { ( : < /tmp/twval-mem ) 2> /out/open-err; \
             echo $? > /out/open; }",
        ],
        |c| {
            c["linux"]["cgroupsPath"] = json!(path);
            c["linux"]["resources"]["memory"] = json!({"limit": 67108864, "reservation": 33554432});
            c["linux"]["resources"]["cpu"] =
                json!({"shares": 512, "quota": 20000, "period": 100000});
            c["linux"]["resources"]["pids"] = json!({"limit": 42});
            for set in ["bounding", "effective", "permitted"] {
                c["process"]["capabilities"][set] = json!(["CAP_MKNOD", "CAP_KILL"]);
            }
        },
    )?;
    let c = env.container(&b, "cg");
    c.create()?;
    let pid = c.pid()?;
    let (mem, v2) = controller_dir(pid, "memory")?;
    rows.put(
        "cgroups.path",
        ensure!(
            mem.ends_with(path.trim_start_matches('/')),
            "memory cgroup {}",
            mem.display()
        ),
    );
    let (memory, cpu, pids) = if v2 {
        (
            read_values(&mem, &["memory.max", "memory.low"]),
            read_values(&mem, &["cpu.max"]),
            read_values(&mem, &["pids.max"]),
        )
    } else {
        (
            read_values(
                &mem,
                &["memory.limit_in_bytes", "memory.soft_limit_in_bytes"],
            ),
            read_values(
                &controller_dir(pid, "cpu")?.0,
                &["cpu.shares", "cpu.cfs_quota_us", "cpu.cfs_period_us"],
            ),
            read_values(&controller_dir(pid, "pids")?.0, &["pids.max"]),
        )
    };
    let want_cpu = if v2 {
        vec!["20000 100000"]
    } else {
        vec!["512", "20000", "100000"]
    };
    rows.put(
        "cgroups.memory",
        ensure!(memory == ["67108864", "33554432"], "memory {memory:?}"),
    );
    rows.put("cgroups.cpu", ensure!(cpu == want_cpu, "cpu {cpu:?}"));
    rows.put("cgroups.pids", ensure!(pids == ["42"], "pids {pids:?}"));
    c.start()?;
    c.wait_status("stopped")?;
    rows.put(
        "cgroups.devices-deny",
        ensure!(
            b.out("open") == "1\n" && b.out("open-err").contains("not permitted"),
            "opening c 1:1 (not allowed): exit {:?}, {:?}",
            b.out("open"),
            b.out("open-err")
        ),
    );
    Ok(())
}

fn cgroups_relative(env: &Env, rows: &mut Rows) -> Outcome {
    let b = env.bundle("cgrel")?;
    let rel = env.unique("cgrel");
    let _sweep = CgroupSweep(rel.clone());
    b.write_with(&["true"], |c| {
        c["linux"]["cgroupsPath"] = json!(rel);
        c["linux"]["resources"]["pids"] = json!({"limit": 43});
    })?;
    let c = env.container(&b, "cgrel");
    c.create()?;
    let (dir, _) = controller_dir(c.pid()?, "pids")?;
    let max = read_values(&dir, &["pids.max"]);
    rows.put(
        "cgroups.relative-path",
        ensure!(
            dir.ends_with(&rel) && max == ["43"],
            "pids cgroup {}, pids.max {max:?}",
            dir.display()
        ),
    );
    Ok(())
}

/// The major:minor of a real disk (throttle rules need an existing block device).
fn a_disk() -> Option<String> {
    fs::read_dir("/sys/block")
        .ok()?
        .flatten()
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            !n.starts_with("loop") && !n.starts_with("ram")
        })
        .find_map(|e| fs::read_to_string(e.path().join("dev")).ok())
        .map(|d| d.trim().to_string())
}

fn cgroups_blkio(env: &Env, rows: &mut Rows) -> Outcome {
    let disk = a_disk().ok_or("no block device to throttle")?;
    let (major, minor) = disk.split_once(':').ok_or("a major:minor")?;
    let b = env.bundle("blkio")?;
    b.write_with(&["true"], |c| {
        c["linux"]["resources"]["blockIO"] = json!({"throttleReadBpsDevice": [
            {"major": major.parse::<u64>().unwrap_or(0), "minor": minor.parse::<u64>().unwrap_or(0),
             "rate": 1048576}
        ]});
    })?;
    let c = env.container(&b, "blkio");
    c.create()?;
    let (dir, v2) = controller_dir(c.pid()?, "blkio")?;
    let got = if v2 {
        read_values(&dir, &["io.max"])
    } else {
        read_values(&dir, &["blkio.throttle.read_bps_device"])
    };
    rows.put(
        "cgroups.blkio-throttle",
        ensure!(
            got.first()
                .is_some_and(|g| g.contains(&format!("{disk} ")) && (g.contains("1048576"))),
            "{} {got:?}",
            dir.display()
        ),
    );
    Ok(())
}

// ---- the test ----

fn which(tool: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

#[test]
fn runtime_tools_checks_twill_oci_fails_nothing_runc_passes() {
    let name = "runtime_tools_checks_twill_oci_fails_nothing_runc_passes";
    if !preconditions(name, &["runc", "ip", "unshare"]) || !busybox_present(name) {
        return;
    }
    let mut runtimes = vec![
        ("twill-oci", PathBuf::from(TWILL_OCI)),
        ("runc", which("runc").expect("runc is on PATH")),
    ];
    if let Some(crun) = which("crun") {
        runtimes.push(("crun", crun));
    }
    let t0 = Instant::now();
    let failures: Vec<Vec<Failure>> = std::thread::scope(|s| {
        let handles: Vec<_> = runtimes
            .iter()
            .map(|(_, bin)| s.spawn(move || validate(bin)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("validate does not panic"))
            .collect()
    });
    let failed = |r: usize, check: &str| failures[r].iter().find(|f| f.check == check);
    let mut table = format!("{:<38}", "check");
    for (label, _) in &runtimes {
        table += &format!(" {label:<10}");
    }
    for check in all_checks() {
        table += &format!("\n{check:<38}");
        for r in 0..runtimes.len() {
            let mark = if failed(r, check).is_some() {
                "FAIL"
            } else {
                "pass"
            };
            table += &format!(" {mark:<10}");
        }
    }
    eprintln!("{table}\n(in {:?})", t0.elapsed());
    for (r, (label, _)) in runtimes.iter().enumerate() {
        // One line per distinct reason (crun refuses this host's hybrid cgroups for all).
        let mut reasons: Vec<(&str, Vec<&str>)> = Vec::new();
        for f in &failures[r] {
            match reasons.iter_mut().find(|(d, _)| *d == f.detail) {
                Some((_, checks)) => checks.push(f.check),
                None => reasons.push((&f.detail, vec![f.check])),
            }
        }
        for (detail, checks) in reasons {
            eprintln!("{label} fails {}: {detail}", checks.join(", "));
        }
    }
    // A harness that cannot run runc's containers would pass twill-oci vacuously.
    assert!(
        failed(1, "start.runs-process").is_none() && failed(1, "process.args").is_none(),
        "runc fails the basics: the harness is broken"
    );
    let declared: Vec<_> = all_checks().collect();
    for gap in KNOWN_GAPS {
        assert!(declared.contains(gap), "KNOWN_GAPS names no check: {gap}");
    }
    let mut problems = Vec::new();
    for check in all_checks() {
        let twill = failed(0, check);
        let runc_passes = failed(1, check).is_none();
        let gap = KNOWN_GAPS.contains(&check);
        match (twill, runc_passes, gap) {
            (Some(f), true, false) => problems.push(format!(
                "{check}: twill-oci fails ({}) where runc passes",
                f.detail
            )),
            (None, _, true) => problems.push(format!(
                "{check}: in KNOWN_GAPS but twill-oci passes it now; remove it from the list"
            )),
            (Some(_), false, true) => problems.push(format!(
                "{check}: in KNOWN_GAPS but runc fails it too; it is no gap"
            )),
            _ => {}
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
