//! A Backup's or Restore's phase and counts from its per-volume operations.

use crate::crd::{Phase, PodVolumeStatus, VolumeCounts};

/// The totals of a set of per-volume operations.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// The overall phase.
    pub phase: Phase,
    /// Counts by outcome.
    pub volumes: VolumeCounts,
    /// Bytes to process.
    pub total_bytes: u64,
    /// Bytes processed.
    pub bytes_done: u64,
    /// Bytes new.
    pub bytes_new: u64,
}

/// Aggregates per-volume statuses (`None`: not started). `skipped` volumes count but do
/// not fail the whole. While any runs: `InProgress`. Then: all done, or nothing to do:
/// `Completed`; some failed or were canceled: `PartiallyFailed` if others completed, else
/// `Failed` (or `Canceled` when `canceled` was asked and nothing failed).
pub(crate) fn aggregate(
    statuses: &[Option<&PodVolumeStatus>],
    skipped: u32,
    canceled: bool,
) -> Totals {
    let mut t = Totals::default();
    t.volumes.total = statuses.len() as u32;
    t.volumes.skipped = skipped;
    let mut running = false;
    for s in statuses {
        let Some(s) = s else {
            running = true;
            continue;
        };
        t.total_bytes += s.progress.total_bytes;
        t.bytes_done += s.progress.bytes_done;
        t.bytes_new += s.progress.bytes_new;
        match s.phase {
            Phase::Completed => t.volumes.completed += 1,
            Phase::Failed | Phase::PartiallyFailed => t.volumes.failed += 1,
            Phase::Canceled => t.volumes.canceled += 1,
            Phase::New | Phase::InProgress => running = true,
        }
    }
    let v = &t.volumes;
    t.phase = if running {
        Phase::InProgress
    } else if v.failed == 0 && v.canceled == 0 {
        Phase::Completed
    } else if v.completed > 0 {
        Phase::PartiallyFailed
    } else if canceled && v.failed == 0 {
        Phase::Canceled
    } else {
        Phase::Failed
    };
    t
}

#[cfg(test)]
mod tests {
    use podvault_api::crd::{Phase, PodVolumeStatus, Progress};

    use super::*;

    fn status(phase: Phase, done: u64) -> PodVolumeStatus {
        PodVolumeStatus {
            phase,
            progress: Progress {
                total_bytes: 100,
                bytes_done: done,
                bytes_new: done / 2,
            },
            ..PodVolumeStatus::default()
        }
    }

    #[test]
    fn phases_aggregate_like_velero() {
        let ok = status(Phase::Completed, 100);
        let bad = status(Phase::Failed, 10);
        let running = status(Phase::InProgress, 50);
        let cancel = status(Phase::Canceled, 20);
        let t = aggregate(&[Some(&ok), Some(&ok)], 3, false);
        assert_eq!(
            (t.phase, t.volumes.completed, t.volumes.skipped),
            (Phase::Completed, 2, 3)
        );
        assert_eq!((t.total_bytes, t.bytes_done, t.bytes_new), (200, 200, 100));
        assert_eq!(
            aggregate(&[Some(&ok), Some(&bad)], 0, false).phase,
            Phase::PartiallyFailed
        );
        assert_eq!(aggregate(&[Some(&bad)], 0, false).phase, Phase::Failed);
        assert_eq!(
            aggregate(&[Some(&ok), Some(&running)], 0, false).phase,
            Phase::InProgress
        );
        assert_eq!(
            aggregate(&[Some(&ok), None], 0, false).phase,
            Phase::InProgress
        );
        assert_eq!(aggregate(&[Some(&cancel)], 0, true).phase, Phase::Canceled);
        assert_eq!(
            aggregate(&[Some(&ok), Some(&cancel)], 0, true).phase,
            Phase::PartiallyFailed
        );
        assert_eq!(aggregate(&[], 2, false).phase, Phase::Completed);
    }
}
