"""``metagrad report``, the main job: every application's report section in one markdown
file with figures. :mod:`.command` is the CLI and the list of sections; :mod:`.core` the
section on every method's meta-gradient."""
