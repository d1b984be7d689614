"""Where a run's pixels and records live, one room a job:

- ``location``: the one place that knows a path on this machine from an object's URL;
- ``objects``: the object-store client (S3, GCS, Azure) behind a URL;
- ``chunks``: whole-chunk reads and writes of the store's arrays, past zarr's pipeline;
- ``pixels``: conversions between stored, computed and exported pixels;
- ``views``: views of stored (and computed) images that tasks read and write by box;
- ``store``: the zarr group of one run (source pyramid, canvases, run record).

Each name is imported from its room (``from gigadream.storage.store import Store``);
importing the package itself loads nothing heavy, so the CLI parses without zarr.
"""
