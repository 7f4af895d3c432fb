"""The toolkit's foundations, imported by every other room: `errors` (GeofaceError), `fileio` (every file
write: atomic, one temporary-name scheme, folders replaced only when geoface wrote them), `params` (typed
configs from params.yaml sections, validated at the edge)."""
