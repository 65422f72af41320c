//! Wake-ups for SQLite workers when another process commits to the database.
//!
//! Every commit in WAL mode appends to the database's `-wal` file. On Linux a thread
//! watches the database's directory with inotify and, when the `-wal` file is written,
//! bumps a [`watch`] counter that idle dispatchers wait on ([`Storage::subscribe`]): a
//! job queued by a web process starts in a worker process within a millisecond or so,
//! instead of at the next poll. Polling stays as the fallback (other systems, network
//! file systems whose writers inotify cannot see, a watch that could not be set up).
//!
//! The process's own writes wake it too; that only costs a claim that finds nothing
//! (which writes nothing, so it cannot wake itself again). Wake-ups are at most one per
//! [`DEBOUNCE`]: a burst of commits is one wake-up.
//!
//! [`Storage::subscribe`]: super::Storage::subscribe

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::watch;

/// The shortest time between two wake-ups.
pub(crate) const DEBOUNCE: Duration = Duration::from_millis(1);

/// How often the watcher thread looks whether its storage was closed.
#[cfg(target_os = "linux")]
const CLOSED_CHECK: Duration = Duration::from_millis(250);

/// The wake-up signal of one open database, and its watcher thread (started on the first
/// subscription, stopped when the storage closes or is dropped).
#[derive(Debug)]
pub(crate) struct Watcher {
    wake: watch::Sender<u64>,
    started: AtomicBool,
    /// Set when the storage closes: the thread exits.
    stop: Arc<AtomicBool>,
}

impl Watcher {
    pub(crate) fn new() -> Self {
        Watcher {
            wake: watch::channel(0).0,
            started: AtomicBool::new(false),
            stop: Arc::new(AtomicBool::new(false)),
        }
    }

    /// A receiver of the wake-ups for the database at `db` (an absolute path), starting
    /// the watcher on first use; `None` where the platform or the file system cannot tell
    /// (workers then poll).
    pub(crate) fn subscribe(self: &Arc<Self>, db: &Path) -> Option<watch::Receiver<u64>> {
        if self.stop.load(Ordering::Acquire) {
            return None;
        }
        if !self.started.swap(true, Ordering::AcqRel) && !start(Arc::downgrade(self), db) {
            self.started.store(false, Ordering::Release);
            return None;
        }
        Some(self.wake.subscribe())
    }

    /// Stop the watcher thread (within [`CLOSED_CHECK`]).
    pub(crate) fn stop(&self) {
        self.stop.store(true, Ordering::Release);
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(target_os = "linux")]
fn start(watcher: Weak<Watcher>, db: &Path) -> bool {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;

    let (Some(dir), Some(name)) = (db.parent(), db.file_name()) else {
        return false;
    };
    let mut wal = name.as_bytes().to_vec();
    wal.extend_from_slice(b"-wal");
    let Ok(dir_c) = CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: plain system calls on a descriptor this function owns.
    let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
    if fd < 0 {
        log::debug!("sqlite: inotify unavailable; workers poll for other processes' jobs");
        return false;
    }
    // SAFETY: `fd` is ours; `dir_c` is a valid NUL-terminated path.
    let wd = unsafe { libc::inotify_add_watch(fd, dir_c.as_ptr(), libc::IN_MODIFY) };
    if wd < 0 {
        // SAFETY: `fd` is ours and closed once.
        unsafe { libc::close(fd) };
        log::debug!(
            "sqlite: cannot watch {}; workers poll for other processes' jobs",
            dir.display()
        );
        return false;
    }
    let stop = match watcher.upgrade() {
        Some(w) => w.stop.clone(),
        None => return false,
    };
    let spawned = std::thread::Builder::new()
        .name("hauler-sqlite-watch".into())
        .spawn(move || {
            watch_loop(fd, &wal, &watcher, &stop);
            // SAFETY: `fd` is ours and closed once, here.
            unsafe { libc::close(fd) };
        });
    spawned.is_ok()
}

/// Read inotify events from `fd` until the storage stops; wake the subscribers when the
/// file named `wal` was written.
#[cfg(target_os = "linux")]
fn watch_loop(fd: libc::c_int, wal: &[u8], watcher: &Weak<Watcher>, stop: &AtomicBool) {
    let header = std::mem::size_of::<libc::inotify_event>();
    let mut buf = vec![0u8; 64 * 1024];
    let timeout = i32::try_from(CLOSED_CHECK.as_millis()).unwrap_or(250);
    while !stop.load(Ordering::Acquire) {
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let ready = unsafe { libc::poll(&mut pfd, 1, timeout) };
        if ready <= 0 {
            continue; // timeout (check `stop`) or EINTR
        }
        let mut written = false;
        loop {
            // SAFETY: reads at most `buf.len()` bytes into `buf`.
            let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
            let Ok(n) = usize::try_from(n) else { break }; // EAGAIN: drained
            if n == 0 {
                break;
            }
            let mut at = 0;
            while at + header <= n {
                // SAFETY: the kernel wrote a whole event header at `at`; read unaligned.
                let event: libc::inotify_event =
                    unsafe { std::ptr::read_unaligned(buf.as_ptr().add(at).cast()) };
                let len = event.len as usize;
                let name = &buf[at + header..(at + header + len).min(n)];
                let name = name.split(|b| *b == 0).next().unwrap_or_default();
                written |= name == wal;
                at += header + len;
            }
        }
        if written {
            let Some(w) = watcher.upgrade() else { return };
            w.wake.send_modify(|n| *n = n.wrapping_add(1));
            drop(w);
            std::thread::sleep(DEBOUNCE);
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn start(_watcher: Weak<Watcher>, _db: &Path) -> bool {
    false
}
