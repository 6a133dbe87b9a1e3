from digitsjax.cli import main

raise SystemExit(main())
