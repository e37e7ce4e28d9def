"""Where blobs come from: a registry (``registry``), later OCI layouts and archives.

Every source implements :class:`ocifs.sources.base.ImageSource`.
"""
