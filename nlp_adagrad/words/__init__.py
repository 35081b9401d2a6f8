"""Word vectors: what the skip-gram and GloVe recipes share (the text corpus, training pairs
and co-occurrences, evaluation on word-similarity and analogy sets, vectors.txt)."""
