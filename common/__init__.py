"""The shared Temporal kit every job package uses: the client and data converter (`client`),
activity dependencies (`deps`), failure helpers (`failures`), shared types (`types`) and the
paged-run types (`paged`)."""
