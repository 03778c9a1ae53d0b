//! twill-run, a minimal container runtime. Not built yet: see the twill-run issue.
