"""Off-site copies (3-2-1): every verified backup also leaves the host.

settings.py   XIEHE_OFFSITE remotes and the transfer knobs, credentials kept out of URLs
rclone.py     the transport: rclone, configured through its environment, with retries
catalog.py    what a remote holds: its complete backups (those with a manifest)
replicate.py  upload a backup, artifacts first, manifest last, checksums compared
prune.py      the local retention policy applied to the remote's own listing
fetch.py      bring a backup back from a remote into the local tree (restore --from)
verify.py     the remote copy's checksums against its manifest
"""
