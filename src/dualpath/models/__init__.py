"""Models over concept-vector sequences: the LVM, the query towers, and heuristic queries."""
