//! The one worker pool: every place that spreads work over threads (hashing
//! a tree, comparing two trees, indexing the view, the rsync workers, the
//! two sides of a stage's start) goes through these few functions, built on
//! `std::thread::scope`, so that none keeps its own queue, stop flag or
//! error handling.
//!
//! - `ordered`: a stream of items through `work` on N threads, results
//!   handed on in submission order, with a bounded number in flight.
//! - `fold` / `map_unordered`: a known list of items, N workers each
//!   taking the next one when free; the first error stops new work.
//! - `join` / `side_by_side`: two things at once, each returning a value.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Condvar, Mutex, mpsc};
use std::time::Duration;

use crate::error::{Error, Kind, Result};
use crate::interrupt;

/// Threads for work that reads local files through FUSE or hashes them:
/// the cores, at least 2 (a FUSE daemon answers while we hash), at most 8.
pub fn cpu_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .clamp(2, 8)
}

/// Runs `work` on every item that `produce` submits, on `threads` threads,
/// and hands the results to `sink` in the order the items were submitted.
/// At most `window` items are between `produce` and `sink` at once, so
/// memory does not grow with the input. The first error stops everything;
/// the sink's error is the cause when it stopped the producer. `produce`
/// runs on the calling thread, `sink` on one of its own.
pub fn ordered<T: Send, R: Send>(
    threads: usize,
    window: usize,
    produce: impl FnOnce(&mut dyn FnMut(T) -> Result<()>) -> Result<()>,
    work: impl Fn(&T) -> Result<R> + Sync,
    sink: impl FnMut(T, R) -> Result<()> + Send,
) -> Result<()> {
    let stop = AtomicBool::new(false);
    let progress = Progress::new(window);
    let (job_tx, job_rx) = mpsc::sync_channel::<(usize, T)>(threads * 2);
    let job_rx = Mutex::new(job_rx);
    let (done_tx, done_rx) = mpsc::channel::<(usize, T, Result<R>)>();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            let (done_tx, job_rx, work, stop) = (done_tx.clone(), &job_rx, &work, &stop);
            scope.spawn(move || {
                // Drain the queue even when stopped, so a submit never blocks.
                while let Ok((seq, item)) = job_rx.lock().unwrap().recv() {
                    if !stop.load(Relaxed) {
                        let result = work(&item);
                        let _ = done_tx.send((seq, item, result));
                    }
                }
            });
        }
        drop(done_tx);
        let collector = scope.spawn(|| collect_in_order(done_rx, sink, &progress, &stop));
        let produced = {
            let mut seq = 0;
            let mut submit = |item: T| -> Result<()> {
                interrupt::check()?;
                progress.wait_for_room(seq, &stop)?;
                job_tx
                    .send((seq, item))
                    .map_err(|_| Error::new(Kind::Io, "the hashing threads stopped"))?;
                seq += 1;
                Ok(())
            };
            produce(&mut submit)
        };
        if produced.is_err() {
            stop.store(true, Relaxed);
        }
        drop(job_tx);
        let collected = collector.join().expect("the collector does not panic");
        interrupt::check()?;
        // The collector's error is the cause when it stopped the walk.
        collected.and(produced)
    })
}

/// How many results the sink has taken, for the producer to wait on.
struct Progress {
    window: usize,
    taken: Mutex<usize>,
    changed: Condvar,
}

impl Progress {
    fn new(window: usize) -> Progress {
        Progress {
            window,
            taken: Mutex::new(0),
            changed: Condvar::new(),
        }
    }

    fn wait_for_room(&self, seq: usize, stop: &AtomicBool) -> Result<()> {
        let mut taken = self.taken.lock().unwrap();
        while seq >= *taken + self.window && !stop.load(Relaxed) {
            interrupt::check()?;
            taken = self
                .changed
                .wait_timeout(taken, Duration::from_millis(100))
                .unwrap()
                .0;
        }
        if stop.load(Relaxed) {
            return Err(Error::new(Kind::Io, "hashing stopped"));
        }
        Ok(())
    }

    fn advance(&self, taken: usize) {
        *self.taken.lock().unwrap() = taken;
        self.changed.notify_all();
    }

    fn stop(&self, stop: &AtomicBool) {
        let _taken = self.taken.lock().unwrap();
        stop.store(true, Relaxed);
        self.changed.notify_all();
    }
}

fn collect_in_order<T, R>(
    done: mpsc::Receiver<(usize, T, Result<R>)>,
    mut sink: impl FnMut(T, R) -> Result<()>,
    progress: &Progress,
    stop: &AtomicBool,
) -> Result<()> {
    let mut early = BTreeMap::new();
    let mut next = 0;
    let mut take = || -> Result<()> {
        for (seq, item, result) in done.iter() {
            early.insert(seq, (item, result));
            while let Some((item, result)) = early.remove(&next) {
                sink(item, result?)?;
                next += 1;
                progress.advance(next);
            }
        }
        Ok(())
    };
    let result = take();
    if result.is_err() {
        progress.stop(stop);
    }
    result
}

/// Runs `work` on every item, `threads` workers at a time, each taking the
/// next item when it is free and folding what it does into its own state
/// (made by `init`). After the first error no new item starts. Returns
/// every worker's state, or the first error.
pub fn fold<T: Send, S: Send>(
    items: impl IntoIterator<Item = T, IntoIter: Send>,
    threads: usize,
    init: impl Fn() -> S + Sync,
    work: impl Fn(&mut S, T) -> Result<()> + Sync,
) -> Result<Vec<S>> {
    let queue = Mutex::new(items.into_iter());
    let states = Mutex::new(Vec::new());
    let first_error = Mutex::new(None);
    let failed = AtomicBool::new(false);
    std::thread::scope(|scope| {
        for _ in 0..threads.max(1) {
            scope.spawn(|| {
                let mut state = init();
                while !failed.load(Relaxed) {
                    let Some(item) = queue.lock().unwrap().next() else {
                        break;
                    };
                    if let Err(e) = work(&mut state, item) {
                        failed.store(true, Relaxed);
                        first_error.lock().unwrap().get_or_insert(e);
                        return;
                    }
                }
                states.lock().unwrap().push(state);
            });
        }
    });
    match first_error.into_inner().unwrap() {
        Some(e) => Err(e),
        None => Ok(states.into_inner().unwrap()),
    }
}

/// `work` on every item, `threads` at a time (see `fold`); the results in
/// no particular order.
pub fn map_unordered<T: Send, R: Send>(
    items: impl IntoIterator<Item = T, IntoIter: Send>,
    threads: usize,
    work: impl Fn(T) -> Result<R> + Sync,
) -> Result<Vec<R>> {
    let per_worker = fold(items, threads, Vec::new, |results, item| {
        results.push(work(item)?);
        Ok(())
    })?;
    Ok(per_worker.into_iter().flatten().collect())
}

/// Runs `background` on a second thread while `here` runs on this one, and
/// returns both values (`background`'s as `join` gives it: Err if it
/// panicked).
pub fn join<A: Send, B>(
    background: impl FnOnce() -> A + Send,
    here: impl FnOnce() -> B,
) -> (std::thread::Result<A>, B) {
    std::thread::scope(|scope| {
        let background = scope.spawn(background);
        let here = here();
        (background.join(), here)
    })
}

/// Like `join`, but a panic of `background` goes on in this thread once
/// `here` is done: for work that has no error of its own to give instead.
pub fn both<A: Send, B>(background: impl FnOnce() -> A + Send, here: impl FnOnce() -> B) -> (A, B) {
    let (background, here) = join(background, here);
    let background = background.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
    (background, here)
}

/// Runs `remote` on a second thread while `local` runs on this one, and
/// waits for both: mounting the reverse view (scrypt, a FUSE daemon) and
/// connecting to the server (or hashing on it) do not depend on each other.
/// A local error wins over a remote one; whatever the other side set up is
/// dropped (unmounted, disconnected) on the way out.
pub fn side_by_side<R: Send, L>(
    remote: impl FnOnce() -> Result<R> + Send,
    local: impl FnOnce() -> Result<L>,
) -> Result<(R, L)> {
    let (remote, local) = join(remote, local);
    let remote = remote.unwrap_or_else(|_| Err(Error::new(Kind::Io, "the remote side panicked")));
    match (remote, local) {
        (_, Err(local)) => Err(local),
        (Err(remote), Ok(_)) => Err(remote),
        (Ok(r), Ok(l)) => Ok((r, l)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn ordered_hands_on_in_order_with_a_bounded_window() {
        let in_flight = AtomicUsize::new(0);
        let most = AtomicUsize::new(0);
        let mut seen = Vec::new();
        ordered(
            4,
            8,
            |submit| {
                for i in 0..200u32 {
                    let now = in_flight.fetch_add(1, Relaxed) + 1;
                    most.fetch_max(now, Relaxed);
                    submit(i)?;
                }
                Ok(())
            },
            |i| {
                // Later items finish first now and then.
                if i % 7 == 0 {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Ok(i * 2)
            },
            |i, doubled| {
                in_flight.fetch_sub(1, Relaxed);
                seen.push((i, doubled));
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(seen, (0..200).map(|i| (i, i * 2)).collect::<Vec<_>>());
        // The one counted before its submit waited for room.
        assert!(most.load(Relaxed) <= 8 + 1, "{most:?}");
    }

    #[test]
    fn ordered_stops_at_the_first_error() {
        let result = ordered(
            2,
            16,
            |submit| (0..1000u32).try_for_each(&mut *submit),
            |i| match *i {
                50 => Err(Error::new(Kind::Io, "item 50")),
                i => Ok(i),
            },
            |_, _| Ok(()),
        );
        assert_eq!(result.unwrap_err().message, "item 50");
        let result = ordered(
            2,
            16,
            |submit| (0..1000u32).try_for_each(&mut *submit),
            |i| Ok(*i),
            |i, _| match i {
                10 => Err(Error::new(Kind::Io, "sink 10")),
                _ => Ok(()),
            },
        );
        assert_eq!(result.unwrap_err().message, "sink 10");
    }

    #[test]
    fn fold_and_map_cover_every_item_once_and_stop_on_error() {
        let sums = fold(
            1..=100u64,
            3,
            || 0u64,
            |sum, i| {
                *sum += i;
                Ok(())
            },
        )
        .unwrap();
        assert!(sums.len() <= 3);
        assert_eq!(sums.iter().sum::<u64>(), 5050);
        let mut all = map_unordered(0..50u32, 4, |i| Ok(i + 1)).unwrap();
        all.sort();
        assert_eq!(all, (1..=50).collect::<Vec<_>>());

        let started = AtomicUsize::new(0);
        let failed = map_unordered(0..1000u32, 2, |i| {
            started.fetch_add(1, Relaxed);
            match i {
                3 => Err(Error::new(Kind::Io, "three")),
                _ => Ok(i),
            }
        });
        assert_eq!(failed.unwrap_err().message, "three");
        assert!(started.load(Relaxed) < 1000, "no new item after the error");
    }

    #[test]
    fn side_by_side_prefers_the_local_error() {
        let both = side_by_side(|| Ok(1), || Ok("l")).unwrap();
        assert_eq!(both, (1, "l"));
        let err = |m: &str| Error::new(Kind::Io, m.to_string());
        let r: Result<((), ())> = side_by_side(|| Err(err("remote")), || Err(err("local")));
        assert_eq!(r.unwrap_err().message, "local");
        let r: Result<((), ())> = side_by_side(|| Err(err("remote")), || Ok(()));
        assert_eq!(r.unwrap_err().message, "remote");
    }

    /// Results reach the sink in submission order although the work takes
    /// longer for early items, and an error in the work stops the run.
    #[test]
    fn the_pool_keeps_order_and_stops_on_error() {
        let mut seen = Vec::new();
        ordered(
            cpu_threads(),
            1024,
            |submit| (0..3000u64).try_for_each(&mut *submit),
            |i| {
                if i % 500 == 0 {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Ok(i * 2)
            },
            |i, doubled| {
                seen.push((i, doubled));
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(seen, (0..3000).map(|i| (i, i * 2)).collect::<Vec<_>>());

        let failed = ordered(
            cpu_threads(),
            1024,
            |submit| (0..100_000u64).try_for_each(&mut *submit),
            |i| match i {
                1234 => Err(Error::new(Kind::Io, "broken file 1234")),
                _ => Ok(()),
            },
            |_, _| Ok(()),
        );
        assert!(failed.unwrap_err().message.contains("broken file 1234"));
    }
}
