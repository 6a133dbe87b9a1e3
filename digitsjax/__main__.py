from digitsjax.main import main

raise SystemExit(main())
