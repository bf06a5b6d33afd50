from insite_console.cli import main

raise SystemExit(main())
