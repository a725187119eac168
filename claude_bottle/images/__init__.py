"""A bottle's images: the recipes (Dockerfiles and the scripts baked in, as data), their build contexts and
content-addressed tags (specs), and the backend-neutral builder that makes them with the engine that builds
them and hands them on (an archive, a registry)."""
