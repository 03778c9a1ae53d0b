//! Log lines captured per test thread, for tests that check what an operator reads.

use std::sync::{Arc, Mutex};

thread_local! {
    /// Where this thread's log lines go while a test captures them.
    static LOG_SINK: std::cell::RefCell<Option<Arc<Mutex<Vec<u8>>>>> =
        const { std::cell::RefCell::new(None) };
}

/// Ends a thread's capture on drop.
pub(crate) struct CaptureGuard;

impl Drop for CaptureGuard {
    fn drop(&mut self) {
        LOG_SINK.with(|s| *s.borrow_mut() = None);
    }
}

/// Log lines the code under test writes on this thread while the returned guard lives. One
/// global subscriber writes every thread's lines to that thread's sink, if any: scoped
/// subscribers (`set_default`) lose events while other test threads register callsites.
pub(crate) fn capture_logs() -> (Arc<Mutex<Vec<u8>>>, CaptureGuard) {
    struct ThreadSink;
    impl std::io::Write for ThreadSink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            LOG_SINK.with(|s| {
                if let Some(buf) = s.borrow().as_ref() {
                    buf.lock().unwrap().extend_from_slice(b);
                }
            });
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        let sub = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .with_writer(|| ThreadSink)
            .finish();
        tracing::subscriber::set_global_default(sub).expect("no other global subscriber");
    });
    let buf = Arc::new(Mutex::new(Vec::new()));
    LOG_SINK.with(|s| *s.borrow_mut() = Some(buf.clone()));
    (buf, CaptureGuard)
}

pub(crate) fn logs(buf: &Arc<Mutex<Vec<u8>>>) -> String {
    String::from_utf8_lossy(&buf.lock().unwrap()).into_owned()
}
