//! ChaCha20-Poly1305 (RFC 8439, empty AAD) from Intel's intel-ipsec-mb, for WireGuard's transport
//! data.
//!
//! Why: on a CPU with AVX-512 the library seals and opens WireGuard-sized messages (1,424 bytes)
//! at about 2.0–2.4 GB/s per core, where ring's AVX2 code makes 1.2–1.4 GB/s on the same machine
//! (docs/benchmarks.md), and the AEAD is the largest single cost of twilld's WireGuard data path.
//! It is a well-kept library (Intel's, the one DPDK and FD.io VPP use), not crypto of our own.
//!
//! The library is opened at run time (`libIPSec_MB.so.1`), so a twilld built with this crate
//! runs where the library is absent; [`ChaChaPoly::load`] then says why, and twilld uses ring.
//! It is used only where the library picks its AVX-512 code, the code measured faster than
//! ring; elsewhere twilld keeps ring.

/// Why the library cannot be used here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoadError {
    #[error(
        "twilld was built without intel-ipsec-mb's header (Debian: libipsec-mb-dev; then rebuild)"
    )]
    NotBuilt,
    #[error("opening intel-ipsec-mb: {0} (Debian: apt install libipsec-mb1)")]
    Library(String),
    #[error(
        "intel-ipsec-mb picked its {0} code on this CPU; only its AVX-512 code beats ring's, so ring is used"
    )]
    NoAvx512(String),
}

/// The library failed a job, or no manager could be made for this thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CipherError {
    #[error("intel-ipsec-mb could not make a manager for this thread")]
    NoManager,
    #[error("intel-ipsec-mb failed a ChaCha20-Poly1305 job (status {0})")]
    Job(i32),
    /// Opening: the tag does not match (the message is forged or damaged).
    #[error("the ChaCha20-Poly1305 tag does not match")]
    BadTag,
}

/// Proof that the library is loaded (and, from [`ChaChaPoly::load`], runs its AVX-512 code);
/// seals and opens.
#[derive(Debug, Clone, Copy)]
pub struct ChaChaPoly {
    _loaded: (),
}

pub const KEY_LEN: usize = 32;
pub const NONCE_LEN: usize = 12;
pub const TAG_LEN: usize = 16;

impl ChaChaPoly {
    /// Opens the library (once per process) and checks its version and the code it picks.
    pub fn load() -> Result<ChaChaPoly, LoadError> {
        ffi::load()
            .and_then(ffi::require_avx512)
            .map(|()| ChaChaPoly { _loaded: () })
    }

    /// The library with whatever code it picks on this CPU, AVX-512 or not: for tests, which
    /// check the shim and the wire format (the same on every code path), not the speed.
    pub fn load_any_code() -> Result<ChaChaPoly, LoadError> {
        ffi::load().map(|_| ChaChaPoly { _loaded: () })
    }

    /// What is in use, for logs: "intel-ipsec-mb 1.3.0 (AVX-512)".
    pub fn describe(&self) -> String {
        format!("intel-ipsec-mb {} (AVX-512)", ffi::version())
    }

    /// Encrypts `data` in place under `key` and `nonce`; returns the tag.
    pub fn seal(
        &self,
        key: &[u8; KEY_LEN],
        nonce: &[u8; NONCE_LEN],
        data: &mut [u8],
    ) -> Result<[u8; TAG_LEN], CipherError> {
        let mut tag = [0u8; TAG_LEN];
        ffi::job(true, key, nonce, data, &mut tag)?;
        Ok(tag)
    }

    /// Decrypts `data` in place if `tag` authenticates it. On `Err` the contents of `data` are
    /// unspecified (the plaintext of a forgery): the caller drops the message.
    pub fn open(
        &self,
        key: &[u8; KEY_LEN],
        nonce: &[u8; NONCE_LEN],
        data: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), CipherError> {
        let mut computed = [0u8; TAG_LEN];
        ffi::job(false, key, nonce, data, &mut computed)?;
        if tags_equal(&computed, tag) {
            Ok(())
        } else {
            Err(CipherError::BadTag)
        }
    }
}

/// Compares two tags in time that does not depend on where they differ.
fn tags_equal(a: &[u8; TAG_LEN], b: &[u8; TAG_LEN]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(twill_imb)]
mod ffi {
    use super::{CipherError, KEY_LEN, LoadError, NONCE_LEN, TAG_LEN};
    use std::cell::RefCell;
    use std::ffi::{CStr, c_char, c_int, c_void};

    unsafe extern "C" {
        fn twill_imb_load(err: *mut c_char, err_len: usize) -> c_int;
        fn twill_imb_version() -> *const c_char;
        fn twill_imb_arch_avx512() -> c_int;
        fn twill_imb_mgr_new() -> *mut c_void;
        fn twill_imb_mgr_free(m: *mut c_void);
        fn twill_imb_chachapoly(
            m: *mut c_void,
            encrypt: c_int,
            key: *const u8,
            nonce: *const u8,
            data: *mut u8,
            len: u64,
            tag: *mut u8,
        ) -> c_int;
    }

    const ARCH_NAMES: [&str; 6] = ["none", "no-AES-NI", "SSE", "AVX", "AVX2", "AVX-512"];

    /// One manager per thread (a manager is not thread-safe), freed when the thread ends.
    struct ThreadManager(*mut c_void);

    impl Drop for ThreadManager {
        fn drop(&mut self) {
            // SAFETY: the pointer came from `twill_imb_mgr_new` and is freed once, here.
            unsafe { twill_imb_mgr_free(self.0) }
        }
    }

    thread_local! {
        static MANAGER: RefCell<Option<ThreadManager>> = const { RefCell::new(None) };
    }

    /// Opens the library; returns the code (`IMB_ARCH`) it picks on this CPU.
    pub fn load() -> Result<c_int, LoadError> {
        static ARCH: std::sync::OnceLock<Result<c_int, LoadError>> = std::sync::OnceLock::new();
        ARCH.get_or_init(load_once).clone()
    }

    fn load_once() -> Result<c_int, LoadError> {
        let mut err = [0 as c_char; 256];
        // SAFETY: `err` is writable for its length; the shim writes a NUL-terminated message
        // into it. Called once per process (the OnceLock in `load`).
        let arch = unsafe { twill_imb_load(err.as_mut_ptr(), err.len()) };
        if arch < 0 {
            // SAFETY: the shim NUL-terminates within the buffer (snprintf).
            let msg = unsafe { CStr::from_ptr(err.as_ptr()) };
            return Err(LoadError::Library(msg.to_string_lossy().into_owned()));
        }
        Ok(arch)
    }

    pub fn require_avx512(arch: c_int) -> Result<(), LoadError> {
        // SAFETY: a constant from the header; no arguments.
        if arch != unsafe { twill_imb_arch_avx512() } {
            let name = usize::try_from(arch)
                .ok()
                .and_then(|a| ARCH_NAMES.get(a))
                .unwrap_or(&"unknown");
            return Err(LoadError::NoAvx512((*name).to_owned()));
        }
        Ok(())
    }

    pub fn version() -> String {
        // SAFETY: returns a pointer to a static NUL-terminated string literal.
        unsafe { CStr::from_ptr(twill_imb_version()) }
            .to_string_lossy()
            .into_owned()
    }

    pub fn job(
        encrypt: bool,
        key: &[u8; KEY_LEN],
        nonce: &[u8; NONCE_LEN],
        data: &mut [u8],
        tag: &mut [u8; TAG_LEN],
    ) -> Result<(), CipherError> {
        MANAGER.with(|cell| {
            let mut slot = cell.borrow_mut();
            let m = match slot.as_ref() {
                Some(ThreadManager(m)) => *m,
                None => {
                    // SAFETY: only reached through a `ChaChaPoly`, which exists only after a
                    // successful load; returns NULL on failure, checked below.
                    let m = unsafe { twill_imb_mgr_new() };
                    if m.is_null() {
                        return Err(CipherError::NoManager);
                    }
                    *slot = Some(ThreadManager(m));
                    m
                }
            };
            // SAFETY: `m` is this thread's manager (never shared: thread-local); the key,
            // nonce and tag pointers are valid for 32, 12 and 16 bytes; `data` is valid for
            // reading and writing `data.len()` bytes, and the job runs to completion inside
            // the call (submitted and flushed), so no pointer outlives it.
            let status = unsafe {
                twill_imb_chachapoly(
                    m,
                    c_int::from(encrypt),
                    key.as_ptr(),
                    nonce.as_ptr(),
                    data.as_mut_ptr(),
                    data.len() as u64,
                    tag.as_mut_ptr(),
                )
            };
            if status == 0 {
                Ok(())
            } else {
                Err(CipherError::Job(status))
            }
        })
    }
}

#[cfg(not(twill_imb))]
mod ffi {
    use super::{CipherError, KEY_LEN, LoadError, NONCE_LEN, TAG_LEN};

    pub fn load() -> Result<i32, LoadError> {
        Err(LoadError::NotBuilt)
    }

    pub fn require_avx512(_arch: i32) -> Result<(), LoadError> {
        Err(LoadError::NotBuilt)
    }

    pub fn version() -> String {
        "absent".to_owned()
    }

    pub fn job(
        _encrypt: bool,
        _key: &[u8; KEY_LEN],
        _nonce: &[u8; NONCE_LEN],
        _data: &mut [u8],
        _tag: &mut [u8; TAG_LEN],
    ) -> Result<(), CipherError> {
        Err(CipherError::NoManager)
    }
}

#[cfg(test)]
mod tests;
