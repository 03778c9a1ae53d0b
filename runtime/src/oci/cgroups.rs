//! The OCI container's cgroup: memory, cpu and pids limits through the runtime's shared
//! `cgroup` managers, plus what only the OCI mode needs: the freezer (pause/resume) and the
//! device allow-list (cgroup v1's `devices` controller) and block I/O weights and throttles.

use std::fs;
use std::path::{Path, PathBuf};

use crate::cgroup;
use crate::error::{Result, RuntimeError};
use crate::oci::spec::{BlockIo, Resources};
use crate::store::Limits;

const ROOT: &str = "/sys/fs/cgroup";

/// v1 hierarchies the OCI mode adds to the shared manager's memory, cpu and pids (those
/// this machine mounts: a controller missing here is not made up under /sys/fs/cgroup). As
/// runc: cpuacct, which engines read CPU usage from (`podman stats` showed 0% without it),
/// and name=systemd, where systemd looks for a process's unit. cpuacct mounted with cpu
/// (`cpu,cpuacct`, both names links to it) is the cpu hierarchy, joined already.
fn v1_extra() -> impl Iterator<Item = &'static str> {
    let root = Path::new(ROOT);
    let same_as_cpu = |c: &str| {
        c == "cpuacct"
            && fs::canonicalize(root.join(c)).ok() == fs::canonicalize(root.join("cpu")).ok()
    };
    [
        "freezer", "devices", "blkio", "cpuset", "cpuacct", "systemd",
    ]
    .into_iter()
    .filter(move |c| root.join(c).join("cgroup.procs").exists() && !same_as_cpu(c))
}

fn v1_dir(controller: &str, rel: &str) -> PathBuf {
    Path::new(ROOT)
        .join(controller)
        .join(rel.trim_start_matches('/'))
}

fn v2_dir(rel: &str) -> PathBuf {
    Path::new(ROOT).join(rel.trim_start_matches('/'))
}

fn write(path: &Path, value: &str) -> Result<()> {
    fs::write(path, value).map_err(|e| {
        RuntimeError::io(
            "writing cgroup file",
            format!("{}={value}", path.display()),
            e,
        )
    })
}

/// The limits of `linux.resources` in the shared form.
pub fn limits(r: &Resources) -> Limits {
    Limits {
        memory_bytes: r
            .memory
            .as_ref()
            .and_then(|m| m.limit)
            .filter(|l| *l > 0)
            .map(|l| l as u64),
        cpus: r.cpu.as_ref().and_then(|c| match (c.quota, c.period) {
            (Some(q), Some(p)) if q > 0 && p > 0 => Some(q as f64 / p as f64),
            (Some(q), None) if q > 0 => Some(q as f64 / 100_000.0),
            _ => None,
        }),
        pids: r
            .pids
            .as_ref()
            .map(|p| p.limit)
            .filter(|l| *l > 0)
            .map(|l| l as u64),
    }
}

/// What every container may use whatever its rules say, as runc allows them: mknod of any
/// node, the default devices, ptys and /dev/net/tun.
const ALWAYS_ALLOWED: &[&str] = &[
    "c *:* m",
    "b *:* m",
    "c 1:3 rwm",
    "c 1:5 rwm",
    "c 1:7 rwm",
    "c 1:8 rwm",
    "c 1:9 rwm",
    "c 5:0 rwm",
    "c 5:1 rwm",
    "c 5:2 rwm",
    "c 136:* rwm",
    "c 10:200 rwm",
];

/// Creates the cgroup at `rel` with `resources`; `devices` (config.json's `linux.devices`)
/// are allowed too.
pub fn create(
    rel: &str,
    resources: &Resources,
    devices: &[crate::oci::spec::Device],
) -> Result<()> {
    cgroup::at(rel).create(&limits(resources))?;
    memory_and_shares(rel, resources)?;
    if cgroup::is_v2() {
        // The device allow-list needs an eBPF program on v2; refuse a restrictive list
        // rather than run with every device open.
        if let Some(b) = &resources.block_io {
            block_io_v2(rel, b)?;
        }
        cpuset_v2(rel, resources)?;
        if resources.devices.iter().any(|d| !d.allow) {
            return Err(RuntimeError::Invalid(
                "linux.resources.devices: device rules need cgroup v1 (twill-oci has no eBPF \
                 device filter yet)"
                    .into(),
            ));
        }
        return Ok(());
    }
    for c in v1_extra() {
        let d = v1_dir(c, rel);
        fs::create_dir_all(&d).map_err(|e| RuntimeError::io("creating cgroup", d.display(), e))?;
    }
    cpuset_v1(rel, resources)?;
    if let Some(b) = &resources.block_io {
        block_io_v1(rel, b)?;
    }
    let dir = v1_dir("devices", rel);
    for rule in &resources.devices {
        let kind = rule.kind.as_deref().unwrap_or("a");
        let num = |n: Option<i64>| n.map_or("*".to_string(), |n| n.to_string());
        let line = if kind == "a" && rule.major.is_none() && rule.minor.is_none() {
            "a".to_string()
        } else {
            format!(
                "{kind} {}:{} {}",
                num(rule.major),
                num(rule.minor),
                rule.access.as_deref().unwrap_or("rwm")
            )
        };
        let file = if rule.allow {
            "devices.allow"
        } else {
            "devices.deny"
        };
        write(&dir.join(file), &line)?;
    }
    for line in ALWAYS_ALLOWED {
        write(&dir.join("devices.allow"), line)?;
    }
    // A fifo ("p") is no device to the devices controller: it needs (and takes) no rule.
    for d in devices.iter().filter(|d| d.kind != "p") {
        let kind = if d.kind == "u" { "c" } else { d.kind.as_str() };
        write(
            &dir.join("devices.allow"),
            &format!("{kind} {}:{} rwm", d.major, d.minor),
        )?;
    }
    Ok(())
}

/// config.json's `cpu.cpus` / `cpu.mems`, when set.
fn cpuset_of(r: &Resources) -> [(&'static str, Option<&str>); 2] {
    fn get(v: Option<&String>) -> Option<&str> {
        v.map(String::as_str).filter(|s| !s.is_empty())
    }
    let cpu = r.cpu.as_ref();
    [
        ("cpuset.cpus", get(cpu.and_then(|c| c.cpus.as_ref()))),
        ("cpuset.mems", get(cpu.and_then(|c| c.mems.as_ref()))),
    ]
}

/// cpuset on cgroup v1: a new cpuset cgroup starts with no CPUs and no memory nodes, and no
/// process can join it so; every level down from the hierarchy's root gets its parent's
/// (where still empty), then the container's own from config.json.
fn cpuset_v1(rel: &str, r: &Resources) -> Result<()> {
    let root = Path::new(ROOT).join("cpuset");
    if !root.join("cgroup.procs").exists() {
        if cpuset_of(r).iter().any(|(_, v)| v.is_some()) {
            return Err(RuntimeError::Invalid(
                "linux.resources.cpu.cpus/mems: this machine mounts no cpuset controller".into(),
            ));
        }
        return Ok(());
    }
    let mut parent = root.clone();
    for part in Path::new(rel.trim_start_matches('/')).components() {
        let dir = parent.join(part);
        for f in ["cpuset.cpus", "cpuset.mems"] {
            let cur = fs::read_to_string(dir.join(f)).unwrap_or_default();
            if cur.trim().is_empty() {
                let from = fs::read_to_string(parent.join(f))
                    .map_err(|e| RuntimeError::io("reading", parent.join(f).display(), e))?;
                write(&dir.join(f), from.trim())?;
            }
        }
        parent = dir;
    }
    for (f, v) in cpuset_of(r) {
        if let Some(v) = v {
            write(&parent.join(f), v)?;
        }
    }
    Ok(())
}

/// cpuset on cgroup v2: the controller enabled down to the container's cgroup, then its
/// `cpuset.cpus` / `cpuset.mems`.
fn cpuset_v2(rel: &str, r: &Resources) -> Result<()> {
    let wanted: Vec<_> = cpuset_of(r)
        .into_iter()
        .filter_map(|(f, v)| v.map(|v| (f, v)))
        .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    let mut cur = PathBuf::from(ROOT);
    for part in Path::new(rel.trim_start_matches('/')).components() {
        let _ = fs::write(cur.join("cgroup.subtree_control"), "+cpuset");
        cur = cur.join(part);
    }
    for (f, v) in wanted {
        if !cur.join(f).exists() {
            return Err(RuntimeError::Invalid(format!(
                "linux.resources.cpu.cpus/mems: {} does not exist (the cpuset controller is \
                 not available to this cgroup)",
                cur.join(f).display()
            )));
        }
        write(&cur.join(f), v)?;
    }
    Ok(())
}

/// An error for a blockIO setting this kernel has no file for (weights need the BFQ or CFQ
/// I/O scheduler), rather than running without it.
fn no_blkio_file(what: &str, file: &Path) -> RuntimeError {
    RuntimeError::Invalid(format!(
        "linux.resources.blockIO.{what}: {} does not exist on this machine (block I/O weights \
         need the BFQ or CFQ scheduler); leave it out",
        file.display()
    ))
}

/// The first of `names` (a controller's file names, newest first) that exists in `dir`.
fn existing(dir: &Path, names: &[&str]) -> Option<PathBuf> {
    names.iter().map(|n| dir.join(n)).find(|p| p.exists())
}

/// blockIO on cgroup v1: `blkio.throttle.*_device` lines, `blkio.[bfq.]weight[_device]`.
fn block_io_v1(rel: &str, b: &BlockIo) -> Result<()> {
    let dir = v1_dir("blkio", rel);
    if !dir.exists() {
        return Err(RuntimeError::Invalid(
            "linux.resources.blockIO: this machine mounts no blkio controller".into(),
        ));
    }
    for (list, file) in [
        (
            &b.throttle_read_bps_device,
            "blkio.throttle.read_bps_device",
        ),
        (
            &b.throttle_write_bps_device,
            "blkio.throttle.write_bps_device",
        ),
        (
            &b.throttle_read_iops_device,
            "blkio.throttle.read_iops_device",
        ),
        (
            &b.throttle_write_iops_device,
            "blkio.throttle.write_iops_device",
        ),
    ] {
        for t in list {
            write(
                &dir.join(file),
                &format!("{}:{} {}", t.major, t.minor, t.rate),
            )?;
        }
    }
    let weight_files = ["blkio.bfq.weight", "blkio.weight"];
    if let Some(w) = b.weight {
        let f = existing(&dir, &weight_files)
            .ok_or_else(|| no_blkio_file("weight", &dir.join("blkio.weight")))?;
        write(&f, &w.to_string())?;
    }
    if b.leaf_weight.is_some() || b.weight_device.iter().any(|d| d.leaf_weight.is_some()) {
        let f = dir.join("blkio.leaf_weight");
        if !f.exists() {
            return Err(no_blkio_file("leafWeight", &f));
        }
        if let Some(w) = b.leaf_weight {
            write(&f, &w.to_string())?;
        }
    }
    for d in &b.weight_device {
        if let Some(w) = d.weight {
            let f = existing(&dir, &["blkio.bfq.weight_device", "blkio.weight_device"])
                .ok_or_else(|| no_blkio_file("weightDevice", &dir.join("blkio.weight_device")))?;
            write(&f, &format!("{}:{} {w}", d.major, d.minor))?;
        }
        if let Some(w) = d.leaf_weight {
            write(
                &dir.join("blkio.leaf_weight_device"),
                &format!("{}:{} {w}", d.major, d.minor),
            )?;
        }
    }
    Ok(())
}

/// blockIO on cgroup v2: `io.max` per device, `io.[bfq.]weight` (runc's conversion of the
/// v1 range [10, 1000] to v2's [1, 10000]).
fn block_io_v2(rel: &str, b: &BlockIo) -> Result<()> {
    let dir = v2_dir(rel);
    for (list, key) in [
        (&b.throttle_read_bps_device, "rbps"),
        (&b.throttle_write_bps_device, "wbps"),
        (&b.throttle_read_iops_device, "riops"),
        (&b.throttle_write_iops_device, "wiops"),
    ] {
        for t in list {
            write(
                &dir.join("io.max"),
                &format!("{}:{} {key}={}", t.major, t.minor, t.rate),
            )?;
        }
    }
    if b.leaf_weight.is_some() || b.weight_device.iter().any(|d| d.leaf_weight.is_some()) {
        return Err(RuntimeError::Invalid(
            "linux.resources.blockIO.leafWeight: cgroup v2 has no leaf weights".into(),
        ));
    }
    let v2_weight = |w: u16| 1 + (u64::from(w.clamp(10, 1000)) - 10) * 9999 / 990;
    if let Some(w) = b.weight {
        match existing(&dir, &["io.bfq.weight", "io.weight"]) {
            Some(f) if f.ends_with("io.bfq.weight") => write(&f, &w.to_string())?,
            Some(f) => write(&f, &v2_weight(w).to_string())?,
            None => return Err(no_blkio_file("weight", &dir.join("io.weight"))),
        }
    }
    for d in &b.weight_device {
        if let Some(w) = d.weight {
            let f = existing(&dir, &["io.bfq.weight", "io.weight"])
                .ok_or_else(|| no_blkio_file("weightDevice", &dir.join("io.weight")))?;
            let w = if f.ends_with("io.bfq.weight") {
                u64::from(w)
            } else {
                v2_weight(w)
            };
            write(&f, &format!("{}:{} {w}", d.major, d.minor))?;
        }
    }
    Ok(())
}

/// What the shared manager does not write: swap (memory + swap, as runc reads it),
/// reservation, swappiness, the OOM killer switch, cpu shares.
fn memory_and_shares(rel: &str, r: &Resources) -> Result<()> {
    let mem = r.memory.clone().unwrap_or_default();
    let shares = r.cpu.as_ref().and_then(|c| c.shares).filter(|s| *s > 0);
    if cgroup::is_v2() {
        let dir = v2_dir(rel);
        if let (Some(swap), Some(limit)) = (mem.swap, mem.limit) {
            let v = if swap < 0 {
                "max".to_string()
            } else {
                (swap - limit).max(0).to_string()
            };
            write(&dir.join("memory.swap.max"), &v)?;
        }
        if let Some(r) = mem.reservation.filter(|r| *r > 0) {
            write(&dir.join("memory.low"), &r.to_string())?;
        }
        if let Some(s) = shares {
            // runc's conversion of shares [2, 262144] to weight [1, 10000].
            let w = 1 + ((s.clamp(2, 262_144) - 2) * 9999) / 262_142;
            write(&dir.join("cpu.weight"), &w.to_string())?;
        }
        if mem.swappiness.is_some() || mem.disable_oom_killer == Some(true) {
            return Err(RuntimeError::Invalid(
                "linux.resources.memory.swappiness/disableOOMKiller need cgroup v1".into(),
            ));
        }
        return Ok(());
    }
    let m = v1_dir("memory", rel);
    if let Some(swap) = mem.swap
        && m.join("memory.memsw.limit_in_bytes").exists()
    {
        write(&m.join("memory.memsw.limit_in_bytes"), &swap.to_string())?;
    }
    if let Some(r) = mem.reservation.filter(|r| *r > 0) {
        write(&m.join("memory.soft_limit_in_bytes"), &r.to_string())?;
    }
    if let Some(s) = mem.swappiness.filter(|s| *s <= 100) {
        write(&m.join("memory.swappiness"), &s.to_string())?;
    }
    if mem.disable_oom_killer == Some(true) {
        write(&m.join("memory.oom_control"), "1")?;
    }
    if let Some(s) = shares {
        write(&v1_dir("cpu", rel).join("cpu.shares"), &s.to_string())?;
    }
    Ok(())
}

/// The `cgroup.procs` files a process joins.
pub fn procs_files(rel: &str) -> Vec<PathBuf> {
    let mut files = cgroup::at(rel).procs_files();
    if !cgroup::is_v2() {
        files.extend(v1_extra().map(|c| v1_dir(c, rel).join("cgroup.procs")));
    }
    files
}

/// Moves `pid` into the cgroup.
pub fn join(rel: &str, pid: i32) -> Result<()> {
    for f in procs_files(rel) {
        write(&f, &pid.to_string())?;
    }
    Ok(())
}

/// Every process in the cgroup and the cgroups below it (which the container's processes
/// may have made).
pub fn pids(rel: &str) -> Vec<i32> {
    let top = if cgroup::is_v2() {
        v2_dir(rel)
    } else {
        v1_dir("pids", rel)
    };
    let mut out = Vec::new();
    pids_below(&top, &mut out);
    out
}

fn pids_below(dir: &Path, out: &mut Vec<i32>) {
    out.extend(
        fs::read_to_string(dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse::<i32>().ok()),
    );
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            pids_below(&e.path(), out);
        }
    }
}

/// Freezes (pause) or thaws (resume) every process of the cgroup and waits until done.
pub fn freeze(rel: &str, frozen: bool) -> Result<()> {
    let (file, value) = if cgroup::is_v2() {
        (
            v2_dir(rel).join("cgroup.freeze"),
            if frozen { "1" } else { "0" },
        )
    } else {
        (
            v1_dir("freezer", rel).join("freezer.state"),
            if frozen { "FROZEN" } else { "THAWED" },
        )
    };
    write(&file, value)?;
    for _ in 0..500 {
        if self::frozen(rel) == frozen {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    Err(RuntimeError::Invalid(format!(
        "cgroup {rel} did not become {}",
        if frozen { "frozen" } else { "thawed" }
    )))
}

/// Whether the cgroup is frozen.
pub fn frozen(rel: &str) -> bool {
    if cgroup::is_v2() {
        fs::read_to_string(v2_dir(rel).join("cgroup.events"))
            .is_ok_and(|s| s.lines().any(|l| l == "frozen 1"))
    } else {
        fs::read_to_string(v1_dir("freezer", rel).join("freezer.state"))
            .is_ok_and(|s| s.trim() == "FROZEN")
    }
}

/// Removes the cgroup (it must be empty).
pub fn remove(rel: &str) -> Result<()> {
    // The shared manager waits until the kernel lets go of an emptied cgroup.
    cgroup::at(rel).remove()?;
    if !cgroup::is_v2() {
        for c in v1_extra() {
            cgroup::remove_tree(&v1_dir(c, rel))?;
        }
    }
    Ok(())
}
