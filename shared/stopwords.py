"""English function words left out of the FSGR concept vocabulary (data, not code)."""

STOPWORDS = frozenset("""
a an the this that these those there here it its they them their he she his her him we us our
you your i me my mine is are was were be been being am do does did doing have has had having
and or but nor so yet if then than as of at by for from in into on onto off out over under up
down to with without within about above below across after against along among around before
behind beneath beside besides between beyond during except inside near next outside past
since through throughout toward towards underneath until upon via while who whom whose which
what when where why how all any both each few more most other some such no not only own same
too very can will just should could would may might must shall one two three four five six
seven eight nine ten several many much another something someone somebody anything nothing
lot lots kind sort top front side back while also again still very s t don very being other
""".split())
