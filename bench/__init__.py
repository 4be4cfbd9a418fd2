"""metakd's benchmarks: drivers that run recipes through `metakd run`, and readers of run folders."""
