"""Which training checkpoints a run writes and keeps (their format: :mod:`res2net_ms.run_state`)."""
import os
import re
import shutil

from ..fileio import atomic_write
from ..run_state import read_run_state, save_training_checkpoint

__all__ = ["CheckpointKeeper"]


class CheckpointKeeper:
    """Where and when checkpoints are written: ``last.ckpt`` at every epoch end (and every
    ``ckpt_save_steps`` steps), ``best.ckpt`` on a new best validation top-1, and
    ``<model>-eNNNN.ckpt`` every ``interval`` epochs, of which ``keep_max`` are kept by
    ``policy``: ``latest_k`` the newest, ``top_k`` the best validation top-1, None all (as
    mindcv's ``ckpt_save_policy``). Each is written once; the others are hard links to it (a
    copy where links are not supported), so saving stays cheap and atomic. Only an
    ``enabled`` keeper writes (rank 0).
    """

    def __init__(self, save_dir, model_name, interval=1, keep_max=10, policy="latest_k",
                 enabled=True):
        self.save_dir = save_dir
        self.model_name = model_name
        self.interval = interval
        self.keep_max = keep_max
        self.policy = policy
        self.enabled = enabled
        self.written = []
        self._pattern = re.compile(re.escape(model_name) + r"-e(\d{4,})\.ckpt$")

    @property
    def last(self):
        return os.path.join(self.save_dir, "last.ckpt")

    @property
    def best(self):
        return os.path.join(self.save_dir, "best.ckpt")

    def numbered(self, epoch):
        return os.path.join(self.save_dir, f"{self.model_name}-e{epoch:04d}.ckpt")

    def save_step(self, params, state):
        """A checkpoint inside an epoch: ``last.ckpt`` only."""
        if self.enabled:
            self.written = [save_training_checkpoint(self.last, params, state)]

    def save(self, params, state, is_best):
        """Write the checkpoints of the epoch ``state.epoch`` just finished."""
        if not self.enabled:
            return
        self.written = [save_training_checkpoint(self.last, params, state)]
        if is_best:
            self.written.append(self._link(self.last, self.best))
        if state.epoch % self.interval == 0:
            self.written.append(self._link(self.last, self.numbered(state.epoch)))
            self._prune()

    def _link(self, source, target):
        def link(tmp):
            try:
                os.link(source, tmp)
            except OSError:
                shutil.copyfile(source, tmp)
        return atomic_write(target, link)

    def _prune(self):
        if self.policy is None:
            return
        found = [name for name in os.listdir(self.save_dir) if self._pattern.match(name)]
        if self.policy == "top_k":
            def score(name):
                state = read_run_state(os.path.join(self.save_dir, name))
                return (state.val_top1 if state else -1.0, name)
        else:
            def score(name):
                return int(self._pattern.match(name).group(1))
        for name in sorted(found, key=score)[:-self.keep_max]:
            os.remove(os.path.join(self.save_dir, name))
