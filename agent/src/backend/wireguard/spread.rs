//! Spreading one batch of messages (the segments of one super-packet, the datagrams of one GRO
//! receive) over the worker and its helper thread: the batch is halved until the halves are
//! small, and each half goes to `rayon::join`, so the helper steals pieces while the worker
//! seals or opens the rest — and the worker takes back what nobody is free to steal.
//! Each message owns a disjoint span of one buffer, handed out with `split_at_mut`: no locks,
//! no `unsafe`.

use std::ops::Range;

/// Batches under this many messages stay on one thread (a handoff costs about as much as
/// sealing a few messages).
pub const SPLIT_MIN: usize = 8;

/// Runs `f(i, job, span)` for every job `i` of `jobs`, `span` being `buf[span_of(job)]`. The
/// jobs' spans must be in increasing order and must not overlap. Split over the calling rayon
/// pool when there is one (a worker of a parallel engine); in order on this thread otherwise.
pub fn for_each_span<J, S, F>(buf: &mut [u8], jobs: &mut [J], span_of: &S, f: &F)
where
    J: Send,
    S: Fn(&J) -> Range<usize> + Sync,
    F: Fn(usize, &mut J, &mut [u8]) + Sync,
{
    let split = rayon::current_thread_index().is_some();
    go(buf, 0, jobs, 0, split, span_of, f);
}

fn go<J, S, F>(
    buf: &mut [u8],
    base: usize,
    jobs: &mut [J],
    first: usize,
    split: bool,
    span_of: &S,
    f: &F,
) where
    J: Send,
    S: Fn(&J) -> Range<usize> + Sync,
    F: Fn(usize, &mut J, &mut [u8]) + Sync,
{
    if split && jobs.len() >= SPLIT_MIN {
        let mid = jobs.len() / 2;
        let at = span_of(&jobs[mid])
            .start
            .saturating_sub(base)
            .min(buf.len());
        let (left_jobs, right_jobs) = jobs.split_at_mut(mid);
        let (left_buf, right_buf) = buf.split_at_mut(at);
        // Down to small pieces: the helper often wakes late, and small pieces let the worker
        // take back what it has not stolen yet (halving only once measured far less; numbers
        // in docs/benchmarks.md).
        rayon::join(
            || go(left_buf, base, left_jobs, first, split, span_of, f),
            || {
                go(
                    right_buf,
                    base + at,
                    right_jobs,
                    first + mid,
                    split,
                    span_of,
                    f,
                )
            },
        );
        return;
    }
    for (k, job) in jobs.iter_mut().enumerate() {
        let span = span_of(job);
        // A span before this half's start would break the callers' promise (spans in order,
        // not overlapping): skip the job rather than hand it someone else's bytes.
        debug_assert!(
            span.start >= base,
            "span {span:?} before its half at {base}"
        );
        let (Some(start), Some(end)) = (span.start.checked_sub(base), span.end.checked_sub(base))
        else {
            continue;
        };
        if let Some(slice) = buf.get_mut(start..end) {
            f(first + k, job, slice);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each job fills its span with its index; split or not, every span gets its own.
    fn fill(split_pool: bool, spans: &[Range<usize>]) -> Vec<u8> {
        let mut buf = vec![0u8; spans.last().map_or(0, |s| s.end) + 3];
        let mut jobs: Vec<(Range<usize>, usize)> = spans.iter().map(|s| (s.clone(), 0)).collect();
        let run = |buf: &mut [u8], jobs: &mut [(Range<usize>, usize)]| {
            for_each_span(
                buf,
                jobs,
                &|j: &(Range<usize>, usize)| j.0.clone(),
                &|i, j, s| {
                    j.1 = i;
                    s.fill(i as u8 + 1);
                },
            )
        };
        if split_pool {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(2)
                .build()
                .unwrap();
            pool.install(|| run(&mut buf, &mut jobs));
        } else {
            run(&mut buf, &mut jobs);
        }
        for (i, j) in jobs.iter().enumerate() {
            assert_eq!(j.1, i, "job {i} ran with its own index");
        }
        buf
    }

    #[test]
    fn every_span_is_handed_to_its_job_once_whether_split_or_not() {
        // Uneven spans with gaps between them, as sealed datagrams of different sizes lie.
        let spans: Vec<Range<usize>> = (0..45)
            .scan(5usize, |at, i| {
                let len = 10 + (i * 7) % 13;
                let s = *at..*at + len;
                *at += len + (i % 3);
                Some(s)
            })
            .collect();
        let serial = fill(false, &spans);
        let split = fill(true, &spans);
        assert_eq!(serial, split);
        for (i, s) in spans.iter().enumerate() {
            assert!(
                serial[s.clone()].iter().all(|&b| b == i as u8 + 1),
                "span {i}"
            );
        }
        assert_eq!(&serial[..5], &[0; 5], "nothing outside the spans");
    }
}
