"""Operations on the backups as a whole: verify, retention, drills, space, health, alerts."""
