//! Which ChaCha20-Poly1305 seals and opens transport data: ring's (everywhere) or Intel's
//! intel-ipsec-mb (x86-64 with AVX-512, when the library is installed: 1.5–1.9× ring's speed
//! at WireGuard's message sizes, and the AEAD is the largest cost of the data path).
//! Handshakes, cookies, counters and the replay window stay boringtun's either way.

use boringtun::noise::TransportAead;
use twill_chachapoly_imb::{ChaChaPoly, LoadError};

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
        self.0.seal(key, nonce, data).ok()
    }

    fn open(&self, key: &[u8; 32], nonce: &[u8; 12], data: &mut [u8], tag: &[u8; 16]) -> bool {
        self.0.open(key, nonce, data, tag).is_ok()
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
            Err(e) if std::env::var("CI").as_deref() == Ok("true") => {
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

    /// For logs and `twilld status`.
    pub fn describe(&self) -> String {
        match self {
            Aead::Ring => "ring".to_owned(),
            Aead::IpsecMb(IpsecMb(c)) => c.describe(),
        }
    }
}
