//! The output side shared by the writers: the SHA-256 of the output is computed on a second
//! thread, in file order, from the buffers the writer read its output bytes into, so a writer
//! need not read its output back; and writeback of the output starts while it is still being
//! produced, so the fsync in [`nodeimg_common::fsutil::AtomicFile::commit`] waits only for
//! the last megabytes.

use std::fs::File;
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender, SyncSender};
use std::thread::JoinHandle;

use anyhow::{anyhow, Context, Result};
use nix::fcntl::{posix_fadvise, PosixFadviseAdvice};
use sha2::{Digest, Sha256};

/// Size of the pooled buffers: large enough that syscalls and channel hand-offs are noise,
/// small enough that a few of them stay cache friendly.
pub(crate) const BUF_SIZE: usize = 4 << 20;
/// Buffers in the pool: one being filled, one being hashed, one queued between them.
const POOL: usize = 3;

enum Msg {
    /// Hash `buf[..len]`; return `buf` to the pool when `pooled`.
    Bytes {
        buf: Vec<u8>,
        len: usize,
        pooled: bool,
    },
    /// Hash this many zero bytes (a hole of the output).
    Zeros(u64),
}

/// A SHA-256 fed in file order and computed on its own thread. Buffers come from a small
/// pool ([`HashPipe::buffer`]); handing one over ([`HashPipe::bytes`]) returns it to the pool
/// once hashed, which bounds memory and keeps the producer at most two buffers ahead.
#[derive(Debug)]
pub(crate) struct HashPipe {
    tx: Option<SyncSender<Msg>>,
    back: Receiver<Vec<u8>>,
    unused: Vec<Vec<u8>>,
    worker: Option<JoinHandle<Sha256>>,
}

impl HashPipe {
    pub(crate) fn new() -> Result<Self> {
        let (tx, rx) = sync_channel::<Msg>(POOL);
        let (back_tx, back) = channel::<Vec<u8>>();
        let worker = std::thread::Builder::new()
            .name("export-sha256".into())
            .spawn(move || hash_loop(&rx, &back_tx))
            .context("starting the hashing thread")?;
        Ok(HashPipe {
            tx: Some(tx),
            back,
            unused: (0..POOL).map(|_| vec![0u8; BUF_SIZE]).collect(),
            worker: Some(worker),
        })
    }

    /// A buffer of [`BUF_SIZE`] bytes with arbitrary content; waits while all are in flight.
    pub(crate) fn buffer(&mut self) -> Result<Vec<u8>> {
        if let Some(b) = self.unused.pop() {
            return Ok(b);
        }
        self.back.recv().map_err(|_| self.stopped())
    }

    /// Hash `buf[..len]` next; `buf` must come from [`HashPipe::buffer`].
    pub(crate) fn bytes(&mut self, buf: Vec<u8>, len: usize) -> Result<()> {
        self.send(Msg::Bytes {
            buf,
            len,
            pooled: true,
        })
    }

    /// Hash `v` next (small, one-off pieces such as headers and metadata).
    pub(crate) fn owned(&mut self, v: Vec<u8>) -> Result<()> {
        let len = v.len();
        self.send(Msg::Bytes {
            buf: v,
            len,
            pooled: false,
        })
    }

    /// Hash `len` zero bytes next.
    pub(crate) fn zeros(&mut self, len: u64) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        self.send(Msg::Zeros(len))
    }

    /// Wait until everything sent is hashed; returns the hasher (to extend or finalize).
    pub(crate) fn finish(mut self) -> Result<Sha256> {
        drop(self.tx.take());
        self.worker
            .take()
            .expect("finished once")
            .join()
            .map_err(|_| anyhow!("the hashing thread panicked"))
    }

    fn send(&mut self, m: Msg) -> Result<()> {
        let tx = self.tx.as_ref().expect("not finished");
        tx.send(m).map_err(|_| self.stopped())
    }

    fn stopped(&self) -> anyhow::Error {
        anyhow!("the hashing thread stopped unexpectedly")
    }
}

impl Drop for HashPipe {
    fn drop(&mut self) {
        // On an error path: let the thread drain and end rather than leave it blocked.
        drop(self.tx.take());
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

fn hash_loop(rx: &Receiver<Msg>, back: &Sender<Vec<u8>>) -> Sha256 {
    static ZEROS: [u8; 1 << 16] = [0u8; 1 << 16];
    let mut h = Sha256::new();
    for m in rx {
        match m {
            Msg::Bytes { buf, len, pooled } => {
                h.update(&buf[..len]);
                if pooled {
                    // The producer may have finished and gone; then the buffer is not needed.
                    let _ = back.send(buf);
                }
            }
            Msg::Zeros(mut n) => {
                while n > 0 {
                    let k = n.min(ZEROS.len() as u64) as usize;
                    h.update(&ZEROS[..k]);
                    n -= k as u64;
                }
            }
        }
    }
    h
}

/// Starts writeback of an output written front to back, [`Writeback::EVERY`] bytes at a time,
/// from a helper thread: submitting the writes costs CPU time better spent beside the copy
/// than serially inside the final fsync, which then only waits for the tail.
///
/// `POSIX_FADV_DONTNEED` is the safe interface that starts writeback of a range without
/// waiting for it and without a device cache flush (`fdatasync` would flush each time); it
/// would also drop clean pages of the range, but a range is advised once, right after it was
/// written, when its pages are still dirty, so they stay cached. Advice only: errors are
/// ignored, the fsync in [`nodeimg_common::fsutil::AtomicFile::commit`] makes the file durable.
#[derive(Debug)]
pub(crate) struct Writeback {
    tx: Option<Sender<u64>>,
    worker: Option<JoinHandle<()>>,
    sent: u64,
}

impl Writeback {
    const EVERY: u64 = 32 << 20;

    pub(crate) fn new(file: &File) -> Result<Self> {
        let file = file.try_clone().context("duplicating the output handle")?;
        let (tx, rx) = channel::<u64>();
        let worker = std::thread::Builder::new()
            .name("export-writeback".into())
            .spawn(move || {
                let mut kicked = 0;
                while let Ok(mut end) = rx.recv() {
                    // When behind, one call for everything written meanwhile.
                    while let Ok(e) = rx.try_recv() {
                        end = e;
                    }
                    let _ = posix_fadvise(
                        &file,
                        kicked as i64,
                        (end - kicked) as i64,
                        PosixFadviseAdvice::POSIX_FADV_DONTNEED,
                    );
                    kicked = end;
                }
            })
            .context("starting the writeback thread")?;
        Ok(Writeback {
            tx: Some(tx),
            worker: Some(worker),
            sent: 0,
        })
    }

    /// Everything before `end` has been written (`end` never decreases).
    pub(crate) fn written_to(&mut self, end: u64) {
        if end >= self.sent + Self::EVERY {
            if let Some(tx) = &self.tx {
                // A stopped helper only means no early writeback.
                let _ = tx.send(end);
            }
            self.sent = end;
        }
    }
}

impl Drop for Writeback {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

/// Tell the kernel `file` is read front to back (larger readahead when it is not cached).
pub(crate) fn sequential(file: &File) {
    let _ = posix_fadvise(file, 0, 0, PosixFadviseAdvice::POSIX_FADV_SEQUENTIAL);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_pieces_in_order_and_recycles_buffers() {
        let mut pipe = HashPipe::new().unwrap();
        let mut expected = Sha256::new();
        // More pieces than pooled buffers: buffers must come back for this to finish.
        for i in 0..(POOL * 3) {
            let mut b = pipe.buffer().unwrap();
            assert_eq!(b.len(), BUF_SIZE);
            let len = 1000 + i;
            b[..len].fill(i as u8 + 1);
            expected.update(&b[..len]);
            pipe.bytes(b, len).unwrap();
            pipe.zeros(70_000).unwrap();
            expected.update(vec![0u8; 70_000]);
        }
        pipe.owned(b"tail".to_vec()).unwrap();
        expected.update(b"tail");
        assert_eq!(pipe.finish().unwrap().finalize(), expected.finalize());
    }
}
