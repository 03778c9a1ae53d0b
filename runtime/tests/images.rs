//! Images from the container ecosystem, in and out of twill-run: built with podman
//! (`--isolation chroot`, a busybox base made `FROM scratch` from Debian's busybox-static, so
//! nothing is pulled), saved as docker-archive and oci-archive, copied by skopeo into OCI
//! layouts (gzip and zstd layers), imported and run; twill-run's own `save` loaded and run by
//! podman; bad archives refused with nothing left behind.
//!
//! podman runs containers here only with runc and explicit ulimits (see cni-plugin's
//! podman_e2e.rs); builds use chroot isolation and need neither.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{Value, json};
use twill_tests::podman::{busybox_context, output_ok, podman};
use twill_tests::{busybox_present, in_ci, preconditions};

const RUN: &str = env!("CARGO_BIN_EXE_twill-run");
const PODMAN_RUN: &[&str] = &[
    "run",
    "--rm",
    "--runtime",
    "runc",
    "--ulimit",
    "nofile=1024:1024",
    "--ulimit",
    "nproc=1024:1024",
    "--net",
    "none",
];

/// A twill-run store of the test's own.
struct Store {
    root: PathBuf,
}

impl Store {
    fn new(dir: &Path, name: &str) -> Store {
        Store {
            root: dir.join(name),
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(RUN)
            .arg("--root")
            .arg(&self.root)
            .args(args)
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "twill-run {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn err(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(!out.status.success(), "twill-run {args:?} succeeded");
        let e = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!e.contains("panicked"), "{e}");
        e
    }

    fn layers(&self) -> usize {
        std::fs::read_dir(self.root.join("layers"))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// Nothing imported and nothing staged.
    fn assert_empty(&self, what: &str) {
        for sub in ["images", "layers", "tmp"] {
            let n = std::fs::read_dir(self.root.join(sub))
                .map(|d| d.count())
                .unwrap_or(0);
            assert_eq!(n, 0, "{what}: {sub}/ is not empty");
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        if let Ok(rd) = std::fs::read_dir(self.root.join("containers")) {
            for e in rd.flatten() {
                let _ = self.run(&["rm", "-f", &e.file_name().to_string_lossy()]);
            }
        }
    }
}

/// Root (as in CI) and busybox-static, or a reason to skip `name` outside CI.
fn root_and_busybox(name: &str) -> bool {
    if !nix::unistd::geteuid().is_root() {
        assert!(!in_ci(), "CI runs as root");
        eprintln!("skipping {name}: needs root");
        return false;
    }
    busybox_present(name)
}

/// The base image's build context: busybox-static and its applets, a passwd with a user
/// `app`, and /etc/greeting for the second image to remove.
fn base_context(dir: &Path) -> PathBuf {
    let ctx = dir.join("base");
    let root = busybox_context(
        &ctx,
        &[
            "sh", "ls", "cat", "echo", "id", "pwd", "env", "rm", "sleep", "test", "mkdir", "find",
            "sort", "grep", "head", "stat", "true", "xargs", "chmod", "ln",
        ],
    );
    std::fs::write(root.join("etc/greeting"), "hello\n").unwrap();
    std::fs::create_dir_all(root.join("srv/sub")).unwrap();
    std::fs::write(root.join("srv/a"), "a\n").unwrap();
    std::fs::write(root.join("srv/sub/b"), "b\n").unwrap();
    ctx
}

fn context(dir: &Path, name: &str, containerfile: &str) -> PathBuf {
    let ctx = dir.join(name);
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(ctx.join("Containerfile"), containerfile).unwrap();
    ctx
}

/// The issue's two-step image.
const TWO: &str = "FROM localhost/bb:latest\n\
                   RUN rm /etc/greeting && echo layer2 > /etc/l2\n\
                   ENV FOO=bar\n\
                   WORKDIR /etc\n\
                   CMD [\"cat\",\"/etc/l2\"]\n";

/// An image using the rest of the config.
const CFG: &str = "FROM localhost/bb:latest\n\
                   RUN mkdir -p /data /home/app && echo seed > /data/seed\n\
                   VOLUME /data\n\
                   EXPOSE 8080/tcp\n\
                   LABEL org.example.role=test\n\
                   STOPSIGNAL SIGQUIT\n\
                   USER app\n\
                   ENTRYPOINT [\"/bin/echo\", \"ep\"]\n\
                   CMD [\"default\"]\n";

/// What the two-step image shows: the RUN rm'd file is gone, /etc/l2 is there, FOO=bar, the
/// working directory is /etc.
const PROBE: &str = "test -e /etc/greeting && echo greeting-present || echo greeting-gone; cat /etc/l2; echo FOO=$FOO; pwd";

fn check_two(s: &Store, name: &str, what: &str) {
    assert_eq!(
        s.ok(&["run", "--rm", "--net", "none", name]),
        "layer2\n",
        "{what}: CMD"
    );
    assert_eq!(
        s.ok(&["run", "--rm", "--net", "none", name, "sh", "-c", PROBE]),
        "greeting-gone\nlayer2\nFOO=bar\n/etc\n",
        "{what}"
    );
}

#[test]
fn podman_images_import_save_and_run_as_podman_runs_them() {
    let name = "podman_images_import_save_and_run_as_podman_runs_them";
    if !preconditions(name, &["podman", "skopeo", "runc"]) || !busybox_present(name) {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let pstore = dir.join("podman");
    let p = || podman(&pstore);
    let build = |tag: &str, ctx: &Path| {
        output_ok(
            p().args(["build", "--isolation", "chroot", "-q", "-t", tag])
                .arg(ctx),
            &format!("podman build {tag}"),
        );
    };
    build("localhost/bb:latest", &base_context(dir));
    build("localhost/two:latest", &context(dir, "two", TWO));
    build("localhost/cfg:latest", &context(dir, "cfg", CFG));
    let save = |format: &str, file: &str, images: &[&str]| -> String {
        let out = dir.join(file);
        let mut c = p();
        c.args(["save", "-q", "--format", format, "-o"]).arg(&out);
        if images.len() > 1 {
            c.arg("-m");
        }
        output_ok(c.args(images), "podman save");
        out.to_string_lossy().into_owned()
    };
    let docker = save(
        "docker-archive",
        "two-docker.tar",
        &["localhost/two:latest"],
    );
    let oci = save("oci-archive", "two-oci.tar", &["localhost/two:latest"]);
    let multi = save(
        "docker-archive",
        "multi.tar",
        &["localhost/two:latest", "localhost/bb:latest"],
    );
    let cfg = save("docker-archive", "cfg.tar", &["localhost/cfg:latest"]);
    let layout = dir.join("layout").to_string_lossy().into_owned();
    let zstd_layout = dir.join("layout-zstd").to_string_lossy().into_owned();
    output_ok(
        Command::new("skopeo").args([
            "copy",
            "-q",
            &format!("oci-archive:{oci}"),
            &format!("oci:{layout}:two"),
        ]),
        "skopeo copy to an OCI layout",
    );
    output_ok(
        Command::new("skopeo").args([
            "copy",
            "-q",
            "--dest-compress-format",
            "zstd",
            &format!("oci-archive:{oci}"),
            &format!("oci:{zstd_layout}:two"),
        ]),
        "skopeo copy to an OCI layout with zstd layers",
    );

    let docker_dir = dir.join("docker-dir").to_string_lossy().into_owned();
    std::fs::create_dir(&docker_dir).unwrap();
    output_ok(
        Command::new("tar").args(["-xf", &docker, "-C", &docker_dir]),
        "extracting the docker-archive",
    );

    // Each format, into a store of its own: the name comes from the archive.
    for (what, cmd, path, want_name) in [
        ("docker-archive", "load", &docker, "localhost/two:latest"),
        ("oci-archive", "load", &oci, "localhost/two:latest"),
        (
            "oci-archive via import",
            "import",
            &oci,
            "localhost/two:latest",
        ),
        ("OCI layout (gzip)", "load", &layout, "two"),
        ("OCI layout (zstd)", "load", &zstd_layout, "two"),
        (
            "extracted docker-archive",
            "load",
            &docker_dir,
            "localhost/two:latest",
        ),
    ] {
        let s = Store::new(dir, &format!("st-{}", what.replace([' ', '(', ')'], "")));
        let out = s.ok(&[cmd, path]);
        assert!(out.contains(want_name), "{what}: {out}");
        let images = s.ok(&["images"]);
        let row = images
            .lines()
            .find(|l| l.starts_with(want_name))
            .unwrap_or_else(|| panic!("{what}: {images}"));
        let cols: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cols[2], "2", "{what}: two layers, kept as layers: {images}");
        assert!(cols[3].ends_with("MB"), "{what}: size column: {images}");
        assert_eq!(s.layers(), 2, "{what}");
        check_two(&s, "two", what);
    }

    // The stacked rootfs is what podman shows for the same image (the per-container files
    // each runtime writes aside).
    // The opaque case too: a directory removed and made again in a later layer hides the
    // lower layers' files in it (buildah writes `.wh..wh..opq` or a whiteout per file).
    build(
        "localhost/opq:latest",
        &context(
            dir,
            "opq",
            "FROM localhost/two:latest\n\
             RUN rm -rf /srv /tmp && mkdir /srv /tmp && echo only > /srv/only && chmod 1777 /tmp && ln /srv/only /srv/hard && ln -s only /srv/soft\n",
        ),
    );
    let opq = save("docker-archive", "opq.tar", &["localhost/opq:latest"]);
    // Names, types, modes and owners of everything but what each runtime adds per container,
    // and link counts of non-directories (podman's vfs store counts directory links as a
    // plain tree does, overlayfs does not; the root directory is each runtime's own).
    let list = "(find / -xdev -path /proc -prune -o -type d -print | xargs stat -c '%n %f %u:%g'; \
                find / -xdev -path /proc -prune -o ! -type d -print | xargs stat -c '%n %f %u:%g %h') \
                | grep -vE '^/( |proc|sys|dev|run|etc/(hosts|hostname|resolv.conf|mtab))' | sort";
    for image in ["two", "opq"] {
        let s = Store::new(dir, &format!("st-compare-{image}"));
        s.ok(&["load", if image == "two" { &docker } else { &opq }]);
        let ours = s.ok(&["run", "--rm", "--net", "none", image, "sh", "-c", list]);
        let theirs = output_ok(
            p().args(PODMAN_RUN)
                .args([&format!("localhost/{image}:latest"), "sh", "-c", list]),
            "podman run",
        );
        assert_eq!(
            ours, theirs,
            "{image}: twill-run's rootfs differs from podman's"
        );
        if image == "opq" {
            assert!(
                !ours.contains("/srv/a")
                    && !ours.contains("/srv/sub")
                    && ours.contains("/srv/only 81a4 0:0 2"),
                "{ours}"
            );
        }
    }

    // A multi-image archive: every image with its RepoTags, the shared layer stored once;
    // rmi keeps the layers another image still uses.
    let s = Store::new(dir, "st-multi");
    let out = s.ok(&["load", "-i", &multi]);
    assert!(
        out.contains("localhost/two:latest") && out.contains("localhost/bb:latest"),
        "{out}"
    );
    assert_eq!(s.layers(), 2, "the base layer is stored once");
    s.ok(&["load", &oci]);
    assert_eq!(
        s.layers(),
        2,
        "loading the same layers again stores nothing new"
    );
    check_two(&s, "localhost/two:latest", "multi-image archive");
    assert_eq!(
        s.ok(&["run", "--rm", "--net", "none", "bb", "cat", "/etc/greeting"]),
        "hello\n"
    );
    s.ok(&["rmi", "two"]);
    assert_eq!(s.layers(), 1, "rmi keeps the layer bb uses");
    assert_eq!(
        s.ok(&["run", "--rm", "--net", "none", "bb", "cat", "/etc/greeting"]),
        "hello\n"
    );
    s.ok(&["rmi", "bb"]);
    s.assert_empty("after removing every image");

    // commit adds a layer; save in both formats; podman loads and runs them with the same
    // output.
    let s = Store::new(dir, "st-save");
    s.ok(&["load", &docker]);
    let c = s.ok(&[
        "run",
        "-d",
        "--net",
        "none",
        "two",
        "sh",
        "-c",
        "echo committed > /etc/c; rm /etc/l2; mkdir -p /var/x; echo y > /var/x/y; sleep 100",
    ]);
    let c = c.trim();
    twill_testbed::wait_for(std::time::Duration::from_secs(10), || {
        s.run(&["exec", c, "test", "-e", "/var/x/y"])
            .status
            .success()
    });
    s.ok(&["commit", c, "snap"]);
    s.ok(&["rm", "-f", c]);
    let inspect: Value = serde_json::from_str(&s.ok(&["inspect", "snap"])).unwrap();
    assert_eq!(inspect["layers"].as_array().unwrap().len(), 3, "{inspect}");
    assert_eq!(
        s.layers(),
        3,
        "commit added one layer on top, not a flattened copy"
    );
    let history = inspect["config"]["history"].as_array().unwrap();
    assert!(
        history.last().unwrap()["created_by"]
            .as_str()
            .unwrap()
            .contains("echo committed"),
        "the commit's history records the command: {inspect}"
    );
    let snap_probe = "ls /etc | grep -vE '^(hosts|hostname|resolv.conf|mtab)$'; cat /etc/c /var/x/y; echo FOO=$FOO; pwd";
    let want_snap = s.ok(&[
        "run", "--rm", "--net", "none", "snap", "sh", "-c", snap_probe,
    ]);
    assert!(
        want_snap.contains("committed\ny\n") && !want_snap.contains("l2"),
        "{want_snap}"
    );
    for format in ["docker-archive", "oci-archive"] {
        // podman 4.3 loads one image per oci-archive: one archive per image there, and one
        // docker-archive with both.
        let save_to = |file: &str, images: &[&str]| -> PathBuf {
            let out = dir.join(file);
            s.ok(&[
                ["save", "--format", format, "-o", out.to_str().unwrap()].as_slice(),
                images,
            ]
            .concat());
            out
        };
        let archives = if format == "oci-archive" {
            vec![
                save_to("saved-oci-two.tar", &["localhost/two:latest"]),
                save_to("saved-oci-snap.tar", &["snap"]),
            ]
        } else {
            vec![save_to(
                "saved-docker.tar",
                &["localhost/two:latest", "snap"],
            )]
        };
        let pstore2 = dir.join(format!("podman-{format}"));
        for a in &archives {
            output_ok(
                podman(&pstore2).args(["load", "-q", "-i"]).arg(a),
                &format!("podman load of twill-run's {format}"),
            );
        }
        let out = &archives[0];
        let theirs = output_ok(
            podman(&pstore2)
                .args(PODMAN_RUN)
                .arg("localhost/two:latest"),
            "podman run two",
        );
        assert_eq!(theirs, "layer2\n", "{format}");
        let theirs = output_ok(
            podman(&pstore2)
                .args(PODMAN_RUN)
                .args(["localhost/two:latest", "sh", "-c", PROBE]),
            "podman run two",
        );
        assert_eq!(theirs, "greeting-gone\nlayer2\nFOO=bar\n/etc\n", "{format}");
        let theirs = output_ok(
            podman(&pstore2).args(PODMAN_RUN).args([
                "localhost/snap:latest",
                "sh",
                "-c",
                snap_probe,
            ]),
            "podman run snap",
        );
        assert_eq!(
            theirs, want_snap,
            "{format}: podman runs the committed image alike"
        );
        // And back: twill-run loads its own archive.
        let back = Store::new(dir, &format!("st-back-{format}"));
        back.ok(&["load", out.to_str().unwrap()]);
        check_two(&back, "two", &format!("{format} saved by twill-run"));
        let _ = podman(&pstore2).args(["rmi", "-a", "-f"]).output();
    }

    // The rest of the config: Entrypoint + Cmd, --entrypoint, User by name, Volumes seeded
    // from the image, Labels and StopSignal.
    let s = Store::new(dir, "st-cfg");
    s.ok(&["load", &cfg]);
    let n = &["run", "--rm", "--net", "none"];
    let run = |extra: &[&str]| s.ok(&[n.as_slice(), extra].concat());
    assert_eq!(run(&["cfg"]), "ep default\n");
    assert_eq!(run(&["cfg", "given"]), "ep given\n");
    assert_eq!(
        run(&["--entrypoint", "/bin/id", "cfg"]),
        "uid=1000(app) gid=1000(app) groups=50(staff)\n"
    );
    assert_eq!(
        run(&["--entrypoint", "/bin/id", "-u", "0:50", "cfg", "-u"]),
        "0\n"
    );
    assert_eq!(
        run(&[
            "--entrypoint",
            "/bin/sh",
            "cfg",
            "-c",
            "echo $HOME; cat /data/seed"
        ]),
        "/home/app\nseed\n"
    );
    assert_eq!(
        run(&[
            "--entrypoint",
            "",
            "-e",
            "FOO=cli",
            "cfg",
            "sh",
            "-c",
            "echo $FOO"
        ]),
        "cli\n"
    );
    let id = s.ok(&[
        "run",
        "-d",
        "--net",
        "none",
        "--entrypoint",
        "/bin/sh",
        "cfg",
        "-c",
        "trap 'echo got-quit; exit 3' QUIT; while true; do sleep 0.1; done",
    ]);
    let id = id.trim();
    let st: Value = serde_json::from_str(&s.ok(&["inspect", id])).unwrap();
    assert_eq!(st["labels"]["org.example.role"], "test", "{st}");
    assert_eq!(st["stop_signal"], "SIGQUIT", "{st}");
    let vol = st["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["target"] == "/data")
        .unwrap_or_else(|| panic!("the image's volume is mounted: {st}"));
    assert_eq!(vol["anonymous"], true);
    std::thread::sleep(std::time::Duration::from_millis(300));
    s.ok(&["stop", "-t", "5", id]);
    let st: Value = serde_json::from_str(&s.ok(&["inspect", id])).unwrap();
    assert_eq!(st["exit_code"], 3, "stop sent the image's StopSignal: {st}");
    assert!(s.ok(&["logs", id]).contains("got-quit"));
    s.ok(&["rm", id]);
    let img: Value = serde_json::from_str(&s.ok(&["inspect", "cfg"])).unwrap();
    assert_eq!(
        img["config"]["config"]["ExposedPorts"]["8080/tcp"],
        json!({})
    );
    assert_eq!(img["config"]["config"]["User"], "app");
}

/// A docker-archive put together by hand: one layer per tar given, a config with their
/// diff IDs.
fn docker_archive(layers: &[Vec<u8>], config: Value, tag: &str) -> Vec<u8> {
    let diff_ids: Vec<String> = layers.iter().map(|l| sha256(l)).collect();
    let mut config = config;
    config["rootfs"] = json!({"type": "layers", "diff_ids": diff_ids});
    config["os"] = json!("linux");
    let config = serde_json::to_vec(&config).unwrap();
    let config_name = format!("{}.json", &sha256(&config)[7..]);
    let names: Vec<String> = diff_ids
        .iter()
        .map(|d| format!("{}.tar", &d[7..]))
        .collect();
    let manifest = json!([{"Config": config_name, "RepoTags": [tag], "Layers": names}]);
    let mut files: Vec<(String, Vec<u8>)> = names.into_iter().zip(layers.iter().cloned()).collect();
    files.push((config_name, config));
    files.push((
        "manifest.json".into(),
        serde_json::to_vec(&manifest).unwrap(),
    ));
    tar_of(&files)
}

fn tar_of(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_entry_type(tar::EntryType::Regular);
        // Raw names, so a test can write `..`, which the builder refuses.
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_cksum();
        b.append(&h, &data[..]).unwrap();
    }
    b.into_inner().unwrap()
}

/// The names and contents of a tar archive's entries, in order (as `tar_of` takes them).
fn files_of(archive: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    let mut ar = tar::Archive::new(archive);
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let n = e.path().unwrap().to_string_lossy().into_owned();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut data).unwrap();
        files.push((n, data));
    }
    files
}

fn sha256(b: &[u8]) -> String {
    twill_runtime::image::digest::Digest::of(b).to_string()
}

fn busybox_layer() -> Vec<u8> {
    let mut files = vec![(
        "bin/busybox".to_string(),
        std::fs::read("/bin/busybox").unwrap(),
    )];
    files.push(("etc/hello".into(), b"hi\n".to_vec()));
    let mut t = tar_of(&files);
    // Make busybox executable (tar_of writes 0644).
    let mut ar = tar::Archive::new(&t[..]);
    let mut b = tar::Builder::new(Vec::new());
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let mut h = e.header().clone();
        h.set_mode(0o755);
        h.set_cksum();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut data).unwrap();
        b.append(&h, &data[..]).unwrap();
    }
    let mut link = tar::Header::new_gnu();
    link.set_entry_type(tar::EntryType::Symlink);
    link.set_mode(0o777);
    link.set_uid(0);
    link.set_gid(0);
    link.set_size(0);
    b.append_link(&mut link, "bin/sh", "busybox").unwrap();
    t = b.into_inner().unwrap();
    t
}

#[test]
fn bad_archives_are_refused_naming_archive_and_entry_and_leave_nothing() {
    let name = "bad_archives_are_refused_naming_archive_and_entry_and_leave_nothing";
    if !root_and_busybox(name) {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let good_layer = busybox_layer();
    let evil_layer = tar_of(&[("../../escaped".into(), b"x".to_vec())]);
    let config =
        json!({"architecture": "amd64", "config": {"Cmd": ["/bin/sh", "-c", "cat /etc/hello"]}});
    let good = docker_archive(
        std::slice::from_ref(&good_layer),
        config.clone(),
        "localhost/good:latest",
    );

    // The hand-made archive itself is fine.
    let s = Store::new(dir, "ok");
    let path = dir.join("good.tar");
    std::fs::write(&path, &good).unwrap();
    s.ok(&["load", path.to_str().unwrap()]);
    assert_eq!(s.ok(&["run", "--rm", "--net", "none", "good"]), "hi\n");
    // save to stdout, load from stdin.
    let piped = Store::new(dir, "piped");
    let script = format!(
        "{RUN} --root {} save good | {RUN} --root {} load",
        s.root.display(),
        piped.root.display()
    );
    let out = Command::new("sh").args(["-c", &script]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(piped.ok(&["run", "--rm", "--net", "none", "good"]), "hi\n");
    // gzip-compressed as a whole (`docker save | gzip`).
    let gz = {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&good).unwrap();
        e.finish().unwrap()
    };
    let s = Store::new(dir, "gz");
    let path = dir.join("good.tar.gz");
    std::fs::write(&path, &gz).unwrap();
    s.ok(&["load", path.to_str().unwrap()]);
    assert_eq!(s.ok(&["run", "--rm", "--net", "none", "good"]), "hi\n");

    let layer_name = format!("{}.tar", &sha256(&good_layer)[7..]);
    // A manifest naming a layer that is not there.
    let missing = {
        let mut files = files_of(&good);
        files.retain(|(n, _)| *n != layer_name);
        tar_of(&files)
    };
    // A config whose diff ID does not match the layer.
    let mismatch = {
        let mut files = files_of(&good);
        for (n, data) in &mut files {
            if *n == layer_name {
                data[700] ^= 1; // a byte of busybox's content (after its 512-byte header)
            }
        }
        tar_of(&files)
    };
    // An oci-archive whose layer has a media type nobody knows.
    let unknown_media = {
        let layer = good_layer.clone();
        let mut cfg = config.clone();
        cfg["rootfs"] = json!({"type": "layers", "diff_ids": [sha256(&layer)]});
        let cfg = serde_json::to_vec(&cfg).unwrap();
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256(&cfg), "size": cfg.len()},
            "layers": [{"mediaType": "application/x-mystery", "digest": sha256(&layer), "size": layer.len()}],
        }))
        .unwrap();
        let index = serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": sha256(&manifest), "size": manifest.len()}
        ]}))
        .unwrap();
        tar_of(&[
            (
                "oci-layout".into(),
                br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
            ),
            ("index.json".into(), index),
            (
                format!("blobs/sha256/{}", &sha256(&manifest)[7..]),
                manifest.clone(),
            ),
            (format!("blobs/sha256/{}", &sha256(&cfg)[7..]), cfg.clone()),
            (
                format!("blobs/sha256/{}", &sha256(&layer)[7..]),
                layer.clone(),
            ),
        ])
    };
    // Two good layers then a traversal, so the good ones were unpacked when it fails.
    let traversal = docker_archive(
        &[
            good_layer.clone(),
            tar_of(&[("etc/x".into(), b"x".to_vec())]),
            evil_layer.clone(),
        ],
        config.clone(),
        "localhost/evil:latest",
    );
    let symlink_escape = {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_mode(0o777);
        h.set_uid(0);
        h.set_gid(0);
        b.append_link(&mut h, "etc", "/etc").unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        b.append_data(&mut h, "etc/twill-escape-test", &b"x"[..])
            .unwrap();
        docker_archive(
            &[b.into_inner().unwrap()],
            config.clone(),
            "localhost/sym:latest",
        )
    };
    let truncated = good[..good.len() / 2].to_vec();

    let cases: Vec<(&str, Vec<u8>, &str, &str)> = vec![
        ("truncated", truncated, &layer_name, "truncated"),
        ("missing-blob", missing, &layer_name, "missing"),
        ("digest-mismatch", mismatch, &layer_name, "digest mismatch"),
        ("traversal", traversal, "../../escaped", "`..`"),
        (
            "symlink-escape",
            symlink_escape,
            "etc/twill-escape-test",
            "symbolic link",
        ),
        (
            "unknown-media-type",
            unknown_media,
            "application/x-mystery",
            "unknown layer media type",
        ),
    ];
    for (what, bytes, entry, reason) in cases {
        let s = Store::new(dir, &format!("bad-{what}"));
        let path = dir.join(format!("{what}.tar"));
        std::fs::write(&path, &bytes).unwrap();
        let e = s.err(&["load", path.to_str().unwrap()]);
        assert!(
            e.contains(path.to_str().unwrap()) && e.contains(entry) && e.contains(reason),
            "{what}: the error names the archive, the entry ({entry}) and why ({reason}): {e}"
        );
        s.assert_empty(what);
        assert!(!Path::new("/etc/twill-escape-test").exists(), "{what}");
        assert!(
            !dir.join("escaped").exists() && !s.root.join("escaped").exists(),
            "{what}"
        );
    }

    // load refuses a plain rootfs tarball (that is import); import takes it.
    let s = Store::new(dir, "rootfs");
    let path = dir.join("rootfs.tar");
    std::fs::write(&path, &good_layer).unwrap();
    let e = s.err(&["load", path.to_str().unwrap()]);
    assert!(
        e.contains("not an image archive") && e.contains("import"),
        "{e}"
    );
    s.assert_empty("load of a rootfs");
    let e = s.err(&["import", path.to_str().unwrap()]);
    assert!(e.contains("give the image a name"), "{e}");
    s.ok(&["import", path.to_str().unwrap(), "plain"]);
    assert_eq!(
        s.ok(&[
            "run",
            "--rm",
            "--net",
            "none",
            "plain",
            "/bin/busybox",
            "cat",
            "/etc/hello"
        ]),
        "hi\n"
    );
    // An image a container uses is not removed.
    let id = s.ok(&[
        "run",
        "-d",
        "--net",
        "none",
        "plain",
        "/bin/busybox",
        "sleep",
        "100",
    ]);
    let e = s.err(&["rmi", "plain"]);
    assert!(e.contains("used by container"), "{e}");
    s.ok(&["rm", "-f", id.trim()]);
    s.ok(&["rmi", "plain"]);
    s.assert_empty("after rmi");
    // Nothing to run.
    let s = Store::new(dir, "nocmd");
    let path = dir.join("nocmd.tar");
    std::fs::write(
        &path,
        docker_archive(&[good_layer], json!({"config": {}}), "nocmd"),
    )
    .unwrap();
    s.ok(&["load", path.to_str().unwrap()]);
    let e = s.err(&["run", "--rm", "--net", "none", "nocmd"]);
    assert!(e.contains("neither Entrypoint nor Cmd"), "{e}");
}

#[test]
fn an_image_with_many_layers_stacks_them_all() {
    let name = "an_image_with_many_layers_stacks_them_all";
    if !root_and_busybox(name) {
        return;
    }
    // 80 layers: more than fit in one page of overlay mount options by full path.
    let mut layers = vec![busybox_layer()];
    for i in 1..80 {
        layers.push(tar_of(&[(
            format!("etc/layer{i:02}"),
            format!("{i}\n").into_bytes(),
        )]));
    }
    let work = tempfile::tempdir().unwrap();
    let path = work.path().join("many.tar");
    std::fs::write(
        &path,
        docker_archive(
            &layers,
            json!({"config": {"Cmd": ["/bin/busybox", "sh", "-c", "/bin/busybox ls /etc | /bin/busybox grep -c layer; /bin/busybox cat /etc/layer79"]}}),
            "many",
        ),
    )
    .unwrap();
    let s = Store::new(work.path(), "store");
    s.ok(&["load", path.to_str().unwrap()]);
    assert_eq!(s.layers(), 80);
    assert_eq!(s.ok(&["run", "--rm", "--net", "none", "many"]), "79\n79\n");
}
