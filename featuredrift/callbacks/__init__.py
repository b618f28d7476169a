"""The front doors: the Trainer callback, the session that publishes its reports, and the checkpoint watcher."""
