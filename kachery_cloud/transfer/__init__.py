"""Layer 6: moving blob bytes between this machine and the object store with presigned URLs: uploads
(single PUT or parts in parallel), verified streaming downloads that resume, ranged reads. Retries transient
failures; asks for a fresh URL when one has expired."""
