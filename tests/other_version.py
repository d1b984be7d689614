"""``dask worker --preload`` of tests/test_cluster_failures.py: a worker that reports another
gigadream version (as one installed from another release would), its code otherwise this
tree's."""
import gigadream

gigadream.__version__ = "0.0.0+other"
