"""The epoch loop: feed one epoch of batches to the compiled training step."""

__all__ = ["run_epoch"]


def run_epoch(train_step, loader, progress, lr_values, global_step):
    """Run one epoch of ``loader`` through ``train_step``; return its statistics.

    The loop waits for the device only where the progress display needs a number; the losses
    of the steps run since then are read in one go (:func:`drain`).
    """
    losses, pending, scale, lr, index, synced, skipped = [], [], None, 0.0, 0, 0, 0

    def drain():
        """Read the losses of the steps run since the last sync; count the skipped ones."""
        skipped_now = 0
        for loss_t, finite_t in pending:
            if bool(finite_t.asnumpy()):
                losses.append(float(loss_t.asnumpy()))
            else:
                skipped_now += 1
        pending.clear()
        return skipped_now

    for index, (images, labels) in enumerate(loader.create_tuple_iterator(num_epochs=1),
                                             start=1):
        lr = float(lr_values[min(global_step, len(lr_values) - 1)])
        loss, finite, scale = train_step(images, labels)
        pending.append((loss, finite))
        global_step += 1
        if progress.wants_sync(index):
            skipped += drain()
            progress.update(index, global_step, losses[-1] if losses else float("nan"), lr,
                            index - synced)
            synced = index
    skipped += drain()
    return {"steps": index, "global_step": global_step, "losses": losses, "skipped": skipped,
            "lr": lr, "loss_scale": float(scale.asnumpy()) if scale is not None else None,
            "images_per_s": progress.speed(global_step)}
