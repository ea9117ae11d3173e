"""One line of progress per trial event, instead of Tune's full-screen tables."""

from __future__ import annotations

import time

from ray.tune import Callback


class DriverCallback(Callback):
    """A Tune callback that writes through the driver's `log` function. Tune pickles its
    callbacks into the experiment state; the log function (a closure, a GUI hook) is left out."""

    log = staticmethod(print)

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "log"}

    def __setstate__(self, state):
        self.__dict__.update(state)


def eta(elapsed: float, done: int, total: int) -> str:
    """', ETA 5m' from the pace so far (nothing before the first unit of work is done)."""
    if done == 0 or done >= total:
        return ""
    seconds = elapsed / done * (total - done)
    return f", ETA {seconds / 60:.0f}m" if seconds >= 90 else f", ETA {seconds:.0f}s"


class StageProgress(DriverCallback):
    def __init__(self, stage: str, log=print, total: int = 0):
        self.stage, self.log, self.total = stage, log, total
        self.started = time.time()
        self.done = self.failed = 0

    def _line(self, trial, what: str) -> None:
        elapsed = time.time() - self.started
        self.log(
            f"[{self.stage}] {trial.config['model']['model_id']}: {what} "
            f"({self.done}/{self.total} done, {self.failed} failed; {elapsed:.0f}s"
            f"{eta(elapsed, self.done + self.failed, self.total)})"
        )

    def on_trial_start(self, iteration, trials, trial, **info):
        self._line(trial, "started")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if "epoch" in result:
            acc = result.get("test_clean_acc")
            extra = f", clean acc {acc:.3f}" if isinstance(acc, float) else ""
            if isinstance(result.get("val_pgd_acc"), float):
                clean = result.get("val_clean_acc")  # a method's own statistics may hold PGD alone
                shown = f" clean {clean:.3f}" if isinstance(clean, float) else ""
                extra = f", validation{shown} PGD {result['val_pgd_acc']:.3f}"
            phase = f" {result['phase']}" if "phase" in result else ""
            self._line(
                trial, f"epoch {result['epoch']}{phase}, loss {result.get('train_loss', 0):.3f}{extra}"
            )
            if result.get("catastrophic_overfitting"):
                self._line(
                    trial,
                    f"catastrophic overfitting at epoch {result['epoch']}: validation "
                    f"PGD accuracy {result['val_pgd_acc']:.3f} fell below a fifth of "
                    f"its best; the card records it",
                )

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.done += 1
        rss = (trial.last_result or {}).get("peak_rss_mb")
        self._line(trial, f"finished, peak RSS {rss:.0f} MB" if isinstance(rss, float) else "finished")

    def on_trial_recover(self, iteration, trials, trial, **info):
        self._line(trial, "failed; retrying from its last checkpoint")

    def on_trial_error(self, iteration, trials, trial, **info):
        self.failed += 1
        self._line(trial, "failed for good")
