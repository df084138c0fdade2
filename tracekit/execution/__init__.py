"""Running a program to get its trace: the sandbox (bubblewrap and rlimits) and the
interpreters it runs."""
