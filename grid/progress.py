"""Progress of the long stages: in a terminal, a bar per stage (models trained, shards evaluated);
otherwise (a log file, a pipe, a test's `log`) one line per event with an ETA, instead of Tune's
full-screen tables."""

from __future__ import annotations

import sys
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


def interactive(log) -> bool:
    """Bars only where a person watches: the default printer, both streams on a terminal."""
    return log is print and sys.stdout.isatty() and sys.stderr.isatty()


class StageBar:
    """A tqdm bar on stderr for one stage's units of work, or nothing when not `interactive`:
    the caller then logs its lines. Other messages go through `write`, above the bar."""

    def __init__(self, stage: str, total: int, unit: str, log=print):
        self.bar = None
        if interactive(log) and total > 0:
            from tqdm import tqdm

            self.bar = tqdm(
                total=total, desc=f"[{stage}]", unit=f" {unit}", file=sys.stderr, dynamic_ncols=True
            )

    def __bool__(self) -> bool:
        return self.bar is not None

    def advance(self, note: str = "", n: int = 1) -> None:
        self.bar.set_postfix_str(note, refresh=False)
        self.bar.update(n)

    def note(self, text: str) -> None:
        self.bar.set_postfix_str(text)

    def write(self, text: str) -> None:
        self.bar.write(text, file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class StageProgress(DriverCallback):
    def __init__(self, stage: str, log=print, total: int = 0):
        self.stage, self.log, self.total = stage, log, total
        self.started = time.time()
        self.done = self.failed = 0
        self.bar = StageBar(stage, total, "models", log)

    def __getstate__(self):  # Tune pickles callbacks; a bar holds a terminal
        return {k: v for k, v in super().__getstate__().items() if k != "bar"}

    def __setstate__(self, state):
        super().__setstate__(state)
        self.bar = StageBar(self.stage, 0, "models")  # none: a restored callback logs lines

    def _line(self, trial, what: str) -> None:
        elapsed = time.time() - self.started
        if self.bar:
            self.bar.note(f"{trial.config['model']['model_id']}: {what}")
            return
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
                self._warn(
                    trial,
                    f"catastrophic overfitting at epoch {result['epoch']}: validation "
                    f"PGD accuracy {result['val_pgd_acc']:.3f} fell below a fifth of "
                    f"its best; the card records it",
                )

    def _warn(self, trial, what: str) -> None:
        """A line that stays in view: above the bar, or logged."""
        if self.bar:
            self.bar.write(f"[{self.stage}] {trial.config['model']['model_id']}: {what}")
        else:
            self._line(trial, what)

    def _finished(self, trial, what: str, warn: bool = False) -> None:
        if not self.bar:
            self._line(trial, what)
            return
        if warn:
            self.bar.write(f"[{self.stage}] {trial.config['model']['model_id']}: {what}")
        self.bar.advance(f"{trial.config['model']['model_id']}: {what}")
        if self.done + self.failed >= self.total:
            self.bar.close()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.done += 1
        rss = (trial.last_result or {}).get("peak_rss_mb")
        self._finished(trial, f"finished, peak RSS {rss:.0f} MB" if isinstance(rss, float) else "finished")

    def on_trial_recover(self, iteration, trials, trial, **info):
        self._warn(trial, "failed; retrying from its last checkpoint")

    def on_trial_error(self, iteration, trials, trial, **info):
        self.failed += 1
        self._finished(trial, "failed for good", warn=True)
