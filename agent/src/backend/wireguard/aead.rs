//! Which ChaCha20-Poly1305 seals and opens transport data: ring's (everywhere) or Intel's
//! intel-ipsec-mb (x86-64 with AVX-512, when the library is installed: 1.5–1.9× ring's speed
//! at WireGuard's message sizes, and the AEAD is the largest cost of the data path).
//! Handshakes, cookies, counters and the replay window stay boringtun's either way.

use std::sync::atomic::{AtomicBool, Ordering};

use boringtun::noise::TransportAead;
use twill_chachapoly_imb::{ChaChaPoly, CipherError, LoadError};

/// `--wireguard-aead`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AeadChoice {
    /// intel-ipsec-mb where it is installed and the CPU has AVX-512, ring otherwise.
    Auto,
    /// ring's, always.
    Ring,
    /// intel-ipsec-mb, or twilld refuses to start (and says why).
    IpsecMb,
}

/// The AEAD in use.
#[derive(Clone, Copy, Debug)]
pub enum Aead {
    Ring,
    IpsecMb(IpsecMb),
}

/// intel-ipsec-mb's ChaCha20-Poly1305, as boringtun's `TransportAead`.
#[derive(Clone, Copy, Debug)]
pub struct IpsecMb(ChaChaPoly);

impl TransportAead for IpsecMb {
    fn seal(&self, key: &[u8; 32], nonce: &[u8; 12], data: &mut [u8]) -> Option<[u8; 16]> {
        self.0
            .seal(key, nonce, data)
            .inspect_err(report_failure)
            .ok()
    }

    fn open(&self, key: &[u8; 32], nonce: &[u8; 12], data: &mut [u8], tag: &[u8; 16]) -> bool {
        match self.0.open(key, nonce, data, tag) {
            Ok(()) => true,
            Err(CipherError::BadTag) => false,
            Err(e) => {
                report_failure(&e);
                false
            }
        }
    }
}

impl Aead {
    /// The AEAD `choice` asks for on this machine; with `Auto`, also why intel-ipsec-mb is not
    /// used (for the log).
    pub fn select(choice: AeadChoice) -> Result<(Aead, Option<LoadError>), LoadError> {
        match choice {
            AeadChoice::Ring => Ok((Aead::Ring, None)),
            AeadChoice::IpsecMb => ChaChaPoly::load().map(|c| (Aead::IpsecMb(IpsecMb(c)), None)),
            AeadChoice::Auto => Ok(match ChaChaPoly::load() {
                Ok(c) => (Aead::IpsecMb(IpsecMb(c)), None),
                Err(why) => (Aead::Ring, Some(why)),
            }),
        }
    }

    /// intel-ipsec-mb with whatever code it picks here, for tests (`None` outside CI when it
    /// is not installed; CI must have it).
    #[cfg(test)]
    pub fn ipsec_mb_for_tests() -> Option<Aead> {
        match ChaChaPoly::load_any_code() {
            Ok(c) => Some(Aead::IpsecMb(IpsecMb(c))),
            // The library exists for x86-64 only: CI elsewhere tests ring alone.
            Err(e) if twill_tests::in_ci() && cfg!(target_arch = "x86_64") => {
                panic!("CI=true: intel-ipsec-mb must be installed (libipsec-mb-dev): {e}")
            }
            Err(e) => {
                eprintln!("skipping the intel-ipsec-mb half: {e}");
                None
            }
        }
    }

    /// What boringtun's sealer and opener are given: `None` is ring, its own default.
    pub fn transport(&self) -> Option<&dyn TransportAead> {
        match self {
            Aead::Ring => None,
            Aead::IpsecMb(c) => Some(c),
        }
    }

    /// For the log and `/metrics`.
    pub fn describe(&self) -> String {
        match self {
            Aead::Ring => "ring".to_owned(),
            Aead::IpsecMb(IpsecMb(c)) => c.describe(),
        }
    }
}

/// `/metrics`: which AEAD runs, as an OpenMetrics info family `twilld_wireguard_aead` (its
/// sample `twilld_wireguard_aead_info`, the name Prometheus' info-gauge convention gives it
/// too, so queries keep working).
pub fn render_info(described: &str, s: &mut String) {
    use std::fmt::Write;
    let name = "twilld_wireguard_aead";
    let _ = writeln!(
        s,
        "# HELP {name} The ChaCha20-Poly1305 sealing and opening transport data (--wireguard-aead).\n# TYPE {name} info\n{name}_info{{aead=\"{}\"}} 1",
        crate::metrics::label_value(described)
    );
}

/// Says once, loudly, that the library failed a job (not a forgery: the library itself), since
/// the message is then counted as `oversize` (sealing) or `unauthenticated` (opening).
fn report_failure(e: &CipherError) {
    static SAID: AtomicBool = AtomicBool::new(false);
    if !SAID.swap(true, Ordering::Relaxed) {
        tracing::error!(error = %e, "intel-ipsec-mb failed; the messages it could not seal or open are dropped (restart with --wireguard-aead ring to use ring instead)");
    }
}
