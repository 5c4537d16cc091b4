-- A purged dead letter keeps its row (what happened and when) but loses its body; the letters
-- that still need action are those neither replayed nor purged.
ALTER TABLE dead_letters ADD COLUMN purged_at timestamptz;
CREATE INDEX dead_letters_open ON dead_letters (recorded_at DESC)
    WHERE replayed_at IS NULL AND purged_at IS NULL;
