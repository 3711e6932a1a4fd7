"""Small shared utilities: atomic file writes and standard JSON (:mod:`mvector.utils.files`), seeding
(:mod:`mvector.utils.seeding`)."""
