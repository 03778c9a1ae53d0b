//! What machine a benchmark ran on, printed with its table: ratios move between machines
//! (vxlan ran 7.07 Gbit/s on one 2-vCPU VM and 12.05 on another), so every recorded run says
//! which CPU, kernel and TCP congestion control it had, and how loaded the machine was.

/// One line: "AMD EPYC, 2 CPUs, kernel 6.18.44, tcp bbr, load 0.21 before".
pub fn describe() -> String {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    describe_from(
        &read("/proc/cpuinfo"),
        cpus,
        &read("/proc/sys/kernel/osrelease"),
        &read("/proc/sys/net/ipv4/tcp_congestion_control"),
        &read("/proc/loadavg"),
    )
}

/// `describe` over the files' contents (empty when unreadable: that part says "unknown").
fn describe_from(cpuinfo: &str, cpus: usize, release: &str, cc: &str, loadavg: &str) -> String {
    let model = cpuinfo.lines().find_map(|l| {
        let (key, value) = l.split_once(':')?;
        (key.trim() == "model name").then_some(value)
    });
    let model = or_unknown(model.unwrap_or_default(), "unknown CPU");
    let load = loadavg.split_whitespace().next().unwrap_or_default();
    let plural = if cpus == 1 { "" } else { "s" };
    format!(
        "{model}, {cpus} CPU{plural}, kernel {}, tcp {}, load {} before",
        or_unknown(release, "unknown"),
        or_unknown(cc, "unknown"),
        or_unknown(load, "unknown")
    )
}

/// `s` without surrounding white space, or `unknown` when nothing is left.
fn or_unknown<'a>(s: &'a str, unknown: &'a str) -> &'a str {
    match s.trim() {
        "" => unknown,
        t => t,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_names_cpu_kernel_congestion_control_and_load() {
        let cpuinfo = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC\nflags\t: avx512f\n\nprocessor\t: 1\nmodel name\t: AMD EPYC\n";
        assert_eq!(
            describe_from(
                cpuinfo,
                2,
                "6.18.44-fc\n",
                "bbr\n",
                "0.21 0.06 0.02 1/180 4242\n"
            ),
            "AMD EPYC, 2 CPUs, kernel 6.18.44-fc, tcp bbr, load 0.21 before"
        );
    }

    #[test]
    fn what_cannot_be_read_is_called_unknown() {
        assert_eq!(
            describe_from("processor\t: 0\nmodel name\t:\n", 1, "", "", ""),
            "unknown CPU, 1 CPU, kernel unknown, tcp unknown, load unknown before"
        );
    }

    #[test]
    fn this_machine_gives_a_line() {
        let line = describe();
        assert!(
            line.contains(" CPU") && line.contains(", kernel "),
            "{line}"
        );
    }
}
